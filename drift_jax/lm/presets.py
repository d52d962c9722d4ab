"""Published dimensions of the models the paper and its follow-ups use, as the config.json fields of their
Hugging Face releases, so a model can be sized and compiled (`preflight`) without its weights.

`config(name)` parses them with the same `hf.config_from_hf` that reads a checkpoint's config.json.
The fields are copied from each model's config.json on the Hugging Face Hub (Qwen/Qwen2.5-*-Instruct,
meta-llama/Llama-3.1-8B-Instruct); only those the decoder reads are kept.
"""

from __future__ import annotations

from drift_jax.lm import hf
from drift_jax.lm.model import ModelConfig

_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
          "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "use_sliding_window": False}

PRESETS: dict[str, dict] = {
    "qwen2_5_0_5b": {**_QWEN2, "vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
                     "tie_word_embeddings": True},
    "qwen2_5_1_5b": {**_QWEN2, "vocab_size": 151936, "hidden_size": 1536, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "intermediate_size": 8960,
                     "tie_word_embeddings": True},
    "qwen2_5_3b": {**_QWEN2, "vocab_size": 151936, "hidden_size": 2048, "num_hidden_layers": 36,
                   "num_attention_heads": 16, "num_key_value_heads": 2, "intermediate_size": 11008,
                   "tie_word_embeddings": True},
    "qwen2_5_7b": {**_QWEN2, "vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
                   "tie_word_embeddings": False},
    "llama3_1_8b": {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                    "intermediate_size": 14336, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                    "max_position_embeddings": 131072, "tie_word_embeddings": False,
                    "torch_dtype": "bfloat16"},
}


def config(name: str, dtype: str | None = None) -> ModelConfig:
    """The ModelConfig of a preset; `dtype` sets param and compute dtype (default: the release's)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return hf.config_from_hf(PRESETS[name], dtype)


def from_config(preset: str, hf_path: str, param_dtype: str = "", compute_dtype: str = "",
                remat: str | None = None) -> ModelConfig:
    """The decoder a run would load, from a preset or the config.json at `hf_path` (no weights read);
    params in `param_dtype` (default: the release's), compute in `compute_dtype` (default: the params')."""
    if preset:
        c = config(preset, param_dtype or None)
    elif hf_path:
        c = hf.read_config(hf_path, param_dtype or None)
    else:
        raise ValueError("set model.preset or model.hf_path")
    c = c.replace(dtype=compute_dtype or c.param_dtype)
    return c.replace(remat=remat) if remat else c
