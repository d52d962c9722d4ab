"""Bridge to Hugging Face checkpoints: load Llama-3 / Qwen2 safetensors into sharded params, export back.

`load_hf(path, mesh=...)` reads each device's shard straight from the safetensors files (no full copy
of any tensor on any device); `save_hf(config, params, path)` writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy so safetensors can read it)
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from drift_jax.lm import sharding
from drift_jax.lm.model import ModelConfig, Params, param_logical_axes
from drift_jax.runtime import files, hosts

SUPPORTED = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
_HF_CLASS = {v: k for k, v in SUPPORTED.items()}


# ----------------------------------------------------------------------------- config


def _rope_scaling(hf: dict) -> tuple[float, tuple | None]:
    """(rope_theta, rope_scaling) from either the classic keys or transformers 5's rope_parameters."""
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if not scaling:
        return theta, None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, ("linear", float(scaling["factor"]))
    if kind == "llama3":
        return theta, (
            "llama3",
            float(scaling["factor"]),
            float(scaling["low_freq_factor"]),
            float(scaling["high_freq_factor"]),
            int(scaling["original_max_position_embeddings"]),
        )
    raise ValueError(f"unsupported rope scaling type {kind!r}; supported: default, linear, llama3")


def config_from_hf(hf: dict, dtype: str | None = None) -> ModelConfig:
    archs = hf.get("architectures") or []
    arch = next((SUPPORTED[a] for a in archs if a in SUPPORTED), None)
    if arch is None:
        raise ValueError(
            f"unsupported architecture {archs or hf.get('model_type')!r}; drift_jax supports {sorted(SUPPORTED)}"
        )
    if hf.get("use_sliding_window"):
        raise ValueError("sliding-window attention (use_sliding_window=true) is not supported")
    if hf.get("mlp_bias"):
        raise ValueError("mlp_bias=true is not supported")
    if arch == "llama" and hf.get("attention_bias"):
        # Llama's attention_bias also adds an o_proj bias, which the model does not have.
        raise ValueError("Llama attention_bias=true is not supported")
    qkv_bias = arch == "qwen2"
    theta, scaling = _rope_scaling(hf)
    heads = hf["num_attention_heads"]
    if dtype is None:
        dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"],
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=qkv_bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        architecture=arch,
        param_dtype=str(dtype),
        dtype=str(dtype),
    )


def config_to_hf(config: ModelConfig) -> dict:
    hf = {
        "architectures": [_HF_CLASS[config.architecture]],
        "model_type": config.architecture,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.mlp_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "hidden_act": "silu",
        "torch_dtype": config.param_dtype,
    }
    if config.architecture == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    else:
        hf.update(use_sliding_window=False)
    if config.rope_scaling:
        kind = config.rope_scaling[0]
        hf["rope_scaling"] = (
            {"rope_type": "linear", "factor": config.rope_scaling[1]}
            if kind == "linear"
            else dict(zip(
                ("rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                config.rope_scaling,
            ))
        )
    return hf


# ----------------------------------------------------------------------------- tensor layout


@dataclass(frozen=True)
class _Map:
    """Our tensor = HF tensor, transposed if `transpose`, then its axis `split` split into (a, b)."""

    hf_name: str  # with {i} for the layer index
    transpose: bool
    split: int | None = None  # axis of the (transposed) HF tensor that packs (heads, head_dim)


def _layout(config: ModelConfig) -> dict[tuple[str, ...], _Map]:
    attn, mlp = "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
    m = {
        ("embedding",): _Map("model.embed_tokens.weight", False),
        ("final_norm", "scale"): _Map("model.norm.weight", False),
        ("layers", "attn_norm", "scale"): _Map("model.layers.{i}.input_layernorm.weight", False),
        ("layers", "mlp_norm", "scale"): _Map("model.layers.{i}.post_attention_layernorm.weight", False),
        ("layers", "attn", "q"): _Map(f"{attn}.q_proj.weight", True, 1),
        ("layers", "attn", "k"): _Map(f"{attn}.k_proj.weight", True, 1),
        ("layers", "attn", "v"): _Map(f"{attn}.v_proj.weight", True, 1),
        ("layers", "attn", "o"): _Map(f"{attn}.o_proj.weight", True, 0),
        ("layers", "mlp", "gate"): _Map(f"{mlp}.gate_proj.weight", True),
        ("layers", "mlp", "up"): _Map(f"{mlp}.up_proj.weight", True),
        ("layers", "mlp", "down"): _Map(f"{mlp}.down_proj.weight", True),
    }
    if config.qkv_bias:
        for p in "qkv":
            m[("layers", "attn", f"{p}_bias")] = _Map(f"{attn}.{p}_proj.bias", False, 0)
    if not config.tie_embeddings:
        m[("lm_head",)] = _Map("lm_head.weight", True)
    return m


def _to_hf(x: np.ndarray, spec: _Map) -> np.ndarray:
    """Inverse of the load mapping, for one layer."""
    if spec.split is not None:
        s = spec.split
        x = x.reshape(*x.shape[:s], x.shape[s] * x.shape[s + 1], *x.shape[s + 2 :])
    return x.T if spec.transpose else x


class _Reader:
    """Lazy access to the tensors of a (possibly sharded) safetensors checkpoint."""

    def __init__(self, path: str):
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        elif os.path.exists(single):
            with safe_open(single, "numpy") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json")
        self.path, self.weight_map, self._files = path, weight_map, {}

    def slice(self, name: str) -> tuple[tuple[int, ...], Callable]:
        if name not in self.weight_map:
            raise KeyError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        file = self.weight_map[name]
        if file not in self._files:
            self._files[file] = safe_open(os.path.join(self.path, file), "numpy")
        s = self._files[file].get_slice(name)
        return tuple(s.get_shape()), s


def _expected_hf_shape(our_shape: tuple[int, ...], spec: _Map) -> tuple[int, ...]:
    shape = list(our_shape)
    if spec.split is not None:
        s = spec.split
        shape[s : s + 2] = [shape[s] * shape[s + 1]]
    return tuple(reversed(shape)) if spec.transpose else tuple(shape)


def _read_block(hf_slice, spec: _Map, idx: tuple[slice, ...], our_shape: tuple[int, ...]) -> np.ndarray:
    """Reads only the HF rows/cols behind our index `idx` (our layout, one layer)."""
    idx = tuple(sl.indices(n) for sl, n in zip(idx, our_shape))  # (start, stop, step=1)
    ranges, sub = [], []
    i = 0
    while i < len(idx):
        if spec.split is not None and i == spec.split:
            (a0, a1, _), (b0, b1, _) = idx[i], idx[i + 1]
            inner = our_shape[i + 1]
            ranges.append((a0 * inner, a1 * inner))
            sub.append((b0, b1))
            i += 2
        else:
            ranges.append(idx[i][:2])
            i += 1
    hf_ranges = list(reversed(ranges)) if spec.transpose else ranges
    block = hf_slice[tuple(slice(a, b) for a, b in hf_ranges)]
    block = block.T if spec.transpose else block
    if spec.split is not None:
        s = spec.split
        a0, a1 = idx[s][:2]
        block = block.reshape(*block.shape[:s], a1 - a0, our_shape[s + 1], *block.shape[s + 1 :])
        b0, b1 = sub[0]
        block = block[(slice(None),) * (s + 1) + (slice(b0, b1),)]
    return block


# ----------------------------------------------------------------------------- public API


def read_config(path: str, dtype: str | None = None) -> ModelConfig:
    """The ModelConfig of a HF model directory, from its config.json alone (no weights are read)."""
    config_path = files.join(path, "config.json")
    if not files.exists(config_path):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
    return config_from_hf(json.loads(files.read_text(config_path)), dtype)


def load_hf(path: str, *, mesh: jax.sharding.Mesh | None = None, dtype: str | None = None) -> tuple[ModelConfig, Params]:
    """Reads a HF Llama/Qwen2 directory into (config, params); with `mesh`, each device gets its shard.

    `dtype` sets param and compute dtype (default: the checkpoint's `torch_dtype`).
    """
    config = read_config(path, dtype)
    reader = _Reader(files.local_input(path))  # safetensors reads local files: a remote folder is copied once
    logical = param_logical_axes(config)
    abstract = jax.eval_shape(lambda: _abstract_params(config))
    target_dtype = jnp.dtype(config.param_dtype)

    def load_one(keypath, names, shaped):
        key = tuple(k.key for k in keypath)
        spec = _layout(config)[key]
        stacked = key[0] == "layers"
        layer_shape = shaped.shape[1:] if stacked else shaped.shape
        layers = range(config.num_layers) if stacked else [None]
        slices = []
        for i in layers:
            name = spec.hf_name.format(i=i)
            hf_shape, s = reader.slice(name)
            want = _expected_hf_shape(layer_shape, spec)
            if hf_shape != want:
                raise ValueError(f"{path}: tensor {name!r} has shape {hf_shape}, expected {want} from config.json")
            slices.append(s)

        def block(idx):
            if not stacked:
                return _read_block(slices[0], spec, idx, layer_shape).astype(target_dtype)
            rows = range(*idx[0].indices(config.num_layers))
            return np.stack([_read_block(slices[r], spec, idx[1:], layer_shape) for r in rows]).astype(target_dtype)

        if mesh is None:
            return jnp.asarray(block(tuple(slice(None) for _ in shaped.shape)))
        shard = sharding.named_sharding(mesh, tuple(names), shaped.shape)
        return jax.make_array_from_callback(shaped.shape, shard, block)

    params = jax.tree_util.tree_map_with_path(
        load_one, logical, abstract, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    return config, params


def _abstract_params(config: ModelConfig) -> Params:
    from drift_jax.lm.model import init_params

    return init_params(config, jax.random.key(0))


def save_hf(config: ModelConfig, params: Params, path: str, *, max_shard_bytes: int = 4 << 30) -> None:
    """Writes config.json + safetensors (sharded with an index above `max_shard_bytes`).

    Multi-host: every process calls it; each tensor is gathered whole (one at a time, so host memory
    holds one shard file at most), process 0 alone writes, and all return once the directory is whole.
    """
    flat = {tuple(k.key for k in kp): x for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    layout = _layout(config)
    # HF Qwen2 always has q/k/v biases: a bias-free config exports zero ones (the same function).
    zero_biases = [(f"model.layers.{i}.self_attn.{p}_proj.bias", heads * config.head_dim)
                   for i in range(config.num_layers)
                   for p, heads in (("q", config.num_heads), ("k", config.num_kv_heads), ("v", config.num_kv_heads))
                   ] if config.architecture == "qwen2" and not config.qkv_bias else []
    bias_dtype = jnp.dtype(next(x.dtype for k, x in flat.items() if k[0] == "layers"))
    # Plan the files from shapes alone, so each tensor is written as soon as it is gathered.
    planned: list[tuple[str, int]] = []  # (hf name, bytes) in file order
    for key, spec in layout.items():
        x = flat[key]
        per = int(np.prod(x.shape[1:] if key[0] == "layers" else x.shape)) * jnp.dtype(x.dtype).itemsize
        names = [spec.hf_name.format(i=i) for i in range(config.num_layers)] if key[0] == "layers" else [spec.hf_name]
        planned += [(n, per) for n in names]
    planned += [(name, n * bias_dtype.itemsize) for name, n in zero_biases]
    file_of, sizes, size = {}, [0], 0
    for name, nbytes in planned:
        if size and size + nbytes > max_shard_bytes:
            sizes.append(0)
            size = 0
        file_of[name] = len(sizes) - 1
        sizes[-1] += nbytes
        size += nbytes
    shard_files = (["model.safetensors"] if len(sizes) == 1
             else [f"model-{n + 1:05d}-of-{len(sizes):05d}.safetensors" for n in range(len(sizes))])
    writer = hosts.is_writer()
    if writer:
        files.makedirs(path)
    pending: dict[str, np.ndarray] = {}
    done = 0  # files written

    def add(name: str, x: np.ndarray) -> None:
        nonlocal done
        pending[name] = np.ascontiguousarray(x)
        while done < len(shard_files) and all(n in pending for n, _ in planned if file_of[n] == done):
            shard = {n: pending.pop(n) for n, _ in planned if file_of[n] == done}
            if writer:
                with files.local_output(files.join(path, shard_files[done])) as local:  # uploaded file by file
                    save_file(shard, local, metadata={"format": "pt"})
            done += 1

    for key, spec in layout.items():
        x = hosts.to_host(flat[key])  # collective: every process gathers every tensor
        if key[0] == "layers":
            for i in range(config.num_layers):
                add(spec.hf_name.format(i=i), _to_hf(x[i], spec))
        else:
            add(spec.hf_name, _to_hf(x, spec))
    for name, n in zero_biases:
        add(name, np.zeros(n, bias_dtype))
    assert done == len(shard_files) and not pending, (done, len(shard_files), sorted(pending))
    if writer:
        files.write_text(files.join(path, "config.json"), json.dumps(config_to_hf(config), indent=2))
        if len(shard_files) > 1:
            weight_map = {name: shard_files[file_of[name]] for name, _ in planned}
            files.write_text(files.join(path, "model.safetensors.index.json"),
                             json.dumps({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, indent=2))
    hosts.barrier(f"save_hf:{path}")
