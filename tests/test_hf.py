"""HF bridge: our logits equal transformers' on tiny random checkpoints; export round-trips; bad inputs fail clearly."""

import json
import os

import jax
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file
from tiny_hf import hf_logits, make_tiny_hf

from drift_jax.lm import hf, model, sharding

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

CASES = {
    "qwen2_gqa_bias_untied": ("qwen2", {}),
    "qwen2_tied": ("qwen2", {"tie_word_embeddings": True}),
    "qwen2_mha_3layers": ("qwen2", {"num_key_value_heads": 4, "num_hidden_layers": 3, "rope_theta": 1e6}),
    "llama_gqa_untied": ("llama", {}),
    "llama_tied_mqa": ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
    "llama3_rope_scaling": ("llama", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
    "llama_head_dim_override": ("llama", {"head_dim": 4, "num_attention_heads": 8, "num_key_value_heads": 2}),
}


def _tokens(vocab=97, shape=(3, 40), seed=0):
    return np.random.RandomState(seed).randint(0, vocab, shape)


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(tmp_path, name):
    arch, kw = CASES[name]
    torch_model = make_tiny_hf(tmp_path, arch, **kw)
    config, params = hf.load_hf(str(tmp_path))
    tokens = _tokens()
    ours = np.asarray(model.logits(params, config, tokens))
    assert ours.dtype == np.float32 and ours.shape == (3, 40, 97)
    np.testing.assert_allclose(ours, hf_logits(torch_model, tokens), atol=1e-4, rtol=0)


def test_config_conventions_agree(tmp_path):
    """Classic rope_theta/rope_scaling keys and transformers 5's rope_parameters give one config."""
    make_tiny_hf(tmp_path, "llama", rope_scaling=LLAMA3_ROPE, rope_theta=500000.0)
    raw = json.loads((tmp_path / "config.json").read_text())
    new = hf.config_from_hf(raw)
    classic = dict(raw)
    params = classic.pop("rope_parameters", None) or {}
    classic["rope_theta"] = params.get("rope_theta", 500000.0)
    classic["rope_scaling"] = {k: v for k, v in {**LLAMA3_ROPE, **params}.items() if k != "rope_theta"}
    assert hf.config_from_hf(classic) == new
    assert new.rope_scaling == ("llama3", 8.0, 1.0, 4.0, 16) and new.rope_theta == 500000.0


@pytest.mark.parametrize("arch,kw", [("qwen2", {}), ("llama", {"tie_word_embeddings": True, "rope_scaling": LLAMA3_ROPE})])
def test_save_hf_round_trip(tmp_path, arch, kw):
    make_tiny_hf(tmp_path / "src", arch, **kw)
    config, params = hf.load_hf(str(tmp_path / "src"))
    hf.save_hf(config, params, str(tmp_path / "out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).float().eval()
    tokens = _tokens(seed=1)
    np.testing.assert_allclose(
        hf_logits(reloaded, tokens), np.asarray(model.logits(params, config, tokens)), atol=1e-4, rtol=0
    )
    config2, params2 = hf.load_hf(str(tmp_path / "out"))
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_sharded_checkpoint_index_and_mesh_load(tmp_path):
    """A multi-file checkpoint (index.json) loads onto a mesh, each device holding only its shard."""
    torch_model = make_tiny_hf(tmp_path / "src", "qwen2", num_attention_heads=4, num_key_value_heads=2)
    config, params = hf.load_hf(str(tmp_path / "src"))
    hf.save_hf(config, params, str(tmp_path / "sharded"), max_shard_bytes=40_000)
    files = sorted(os.listdir(tmp_path / "sharded"))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    config_m, params_m = hf.load_hf(str(tmp_path / "sharded"), mesh=mesh)
    q = params_m["layers"]["attn"]["q"]  # [L, D, N, H] sharded embed->fsdp, heads->tensor
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (2, 32, 2, 16)
    tokens = _tokens()
    with jax.set_mesh(mesh):
        ours = np.asarray(model.logits(params_m, config_m, tokens))
    np.testing.assert_allclose(ours, hf_logits(torch_model, tokens), atol=1e-4, rtol=0)


def test_dtype_override_bf16(tmp_path):
    make_tiny_hf(tmp_path, "qwen2")
    config, params = hf.load_hf(str(tmp_path), dtype="bfloat16")
    assert config.param_dtype == "bfloat16" and config.dtype == "bfloat16"
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(params))


def test_unknown_architecture(tmp_path):
    make_tiny_hf(tmp_path, "qwen2")
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["architectures"] = ["MistralForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="unsupported architecture.*Mistral"):
        hf.load_hf(str(tmp_path))


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load_hf(str(tmp_path))
    make_tiny_hf(tmp_path, "qwen2")
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.load_hf(str(tmp_path))


def test_missing_tensor(tmp_path):
    make_tiny_hf(tmp_path, "llama")
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        hf.load_hf(str(tmp_path))


def test_wrong_shape(tmp_path):
    make_tiny_hf(tmp_path, "llama")
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["intermediate_size"] = 128  # the checkpoint holds 96
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"mlp\.(gate|up|down)_proj\.weight' has shape \((96, 64|64, 96)\), expected \((128, 64|64, 128)\)"):
        hf.load_hf(str(tmp_path))


def test_qwen2_without_bias_exports_zero_biases(tmp_path):
    config = model.ModelConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                               head_dim=8, mlp_dim=32, architecture="qwen2", qkv_bias=False)
    params = model.init_params(config, jax.random.key(0))
    hf.save_hf(config, params, str(tmp_path))
    loaded_config, loaded = hf.load_hf(str(tmp_path))
    assert loaded_config.qkv_bias and not np.any(np.asarray(loaded["layers"]["attn"]["k_bias"]))
    tokens = _tokens(vocab=50, shape=(2, 9))
    np.testing.assert_allclose(model.logits(loaded, loaded_config, tokens), model.logits(params, config, tokens), atol=1e-6)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).float().eval()
    np.testing.assert_allclose(hf_logits(torch_model, tokens), model.logits(params, config, tokens), atol=1e-4)
