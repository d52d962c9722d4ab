"""Builds tiny random Llama / Qwen2 checkpoints with transformers (torch CPU) for parity tests."""

from __future__ import annotations

import torch
import transformers

BASE = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)


def make_tiny_hf(path, arch: str = "qwen2", seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """Saves a random tiny `arch` ("llama" | "qwen2") model in f32 to `path`; returns the torch model."""
    torch.manual_seed(seed)
    kw = {**BASE, **overrides}
    cls_cfg, cls_model = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    model = cls_model(cls_cfg(**kw)).to(torch.float32).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so the parity test can see mistakes.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(path), safe_serialization=True)
    return model


def hf_logits(model, tokens) -> "torch.Tensor":
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
