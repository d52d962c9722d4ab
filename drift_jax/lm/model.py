"""Llama-3 / Qwen2-family decoder in Flax Linen: one forward for full sequences, ragged prefill and decode.

Einsum letters: B batch, T query length, S key/cache length, D embed, N query heads, K kv heads,
G query heads per kv head (N = K*G), H head dim, F mlp hidden, V vocab, L layers, X = B*T tokens.

The forward is pure: `forward(params, config, tokens_BxT, cache=...) -> (logits_BxTxV, cache)`.
The KV cache (`Cache`) is an explicit pytree with per-row lengths, so one call serves
  * a full causal sequence (no cache; optional packing with `segment_ids`),
  * a ragged prefill or an `extend` of chosen rows (cache + `num_new_B` valid tokens per row),
  * one decode step (T = 1).
Row b's i-th new token sits at position cache.lengths[b] + i; it is written there and attends to
positions <= its own. Tokens beyond num_new_B[b] are padding: never written, their outputs junk.
The layers (`layers.Block`) are scanned over stacked params; with a stacked cache they run unrolled, each
updating the cache in place; `per_layer` gives the form a decode loop on XLA:CPU carries (layers unstacked,
one cache per layer), which runs the same Block per layer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from drift_jax.lm.layers import Block, RMSNorm, _param, _Step
from drift_jax.lm.sharding import constrain

Params = Any
Remat = Literal["none", "full", "save_matmuls"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Dimensions and numerics of a decoder; hashable so it can be a static jit argument."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # ("llama3", factor, low_freq_factor, high_freq_factor, original_max_position) or
    # ("linear", factor) or None.
    rope_scaling: tuple | None = None
    qkv_bias: bool = False
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    architecture: str = "qwen2"  # "llama" or "qwen2": which HF class save_hf writes.
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; norms, softmax and logits stay in float32
    # Layer rematerialisation under grad (never on cache paths). "save_matmuls" keeps the matmul and
    # attention outputs and recomputes norms, rope and activations: half the step's memory of "none",
    # and on CPU, where every step's temporaries are freshly page-faulted, a ~12% faster train step.
    remat: Remat = "save_matmuls"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.remat not in ("none", "full", "save_matmuls"):
            raise ValueError(f"remat must be none|full|save_matmuls, got {self.remat!r}")

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    @property
    def num_params(self) -> int:
        d, n, k, h, f = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
        attn = d * (n + 2 * k) * h + n * h * d + (self.qkv_bias and (n + 2 * k) * h)
        layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + emb + d


@flax.struct.dataclass
class Cache:
    """Per-layer K/V, stacked over layers, plus how many positions of each row are filled."""

    k_LxBxSxKxH: jax.Array
    v_LxBxSxKxH: jax.Array
    lengths_B: jax.Array  # int32

    @property
    def max_length(self) -> int:
        return self.k_LxBxSxKxH.shape[2]


CACHE_LOGICAL = Cache(
    k_LxBxSxKxH=("layers", "batch", "cache_length", "act_kv_heads", "head_dim"),
    v_LxBxSxKxH=("layers", "batch", "cache_length", "act_kv_heads", "head_dim"),
    lengths_B=("batch",),
)


@flax.struct.dataclass
class LayerCaches:
    """The cache as the decode loop carries it on XLA:CPU (`per_layer`): one K and V per layer, each
    updated in place (XLA:CPU copies a stacked array's layer slice on every read, weights too), K as
    [B, K, H, S] and V as [B, K, S, H] so that both attention products are plain batched matmuls."""

    k: tuple  # [B, K, H, S] per layer
    v: tuple  # [B, K, S, H] per layer
    lengths_B: jax.Array

    @property
    def max_length(self) -> int:
        return self.k[0].shape[3]


def per_layer(params: Params, cache: Cache) -> tuple[Params, LayerCaches]:
    """The params with their layers unstacked (`layers_0`, `layers_1`, ...) and the cache as
    `LayerCaches`: what a decode loop on XLA:CPU makes once, outside the loop. `forward` takes both."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(cache.k_LxBxSxKxH.shape[0]):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    k = tuple(jnp.transpose(x, (0, 2, 3, 1)) for x in cache.k_LxBxSxKxH)
    v = tuple(jnp.transpose(x, (0, 2, 1, 3)) for x in cache.v_LxBxSxKxH)
    return out, LayerCaches(k, v, cache.lengths_B)


def stacked(cache: LayerCaches) -> Cache:
    """`per_layer`'s cache back in the stacked layout."""
    k = jnp.stack([jnp.transpose(x, (0, 3, 1, 2)) for x in cache.k])
    v = jnp.stack([jnp.transpose(x, (0, 2, 1, 3)) for x in cache.v])
    return Cache(k, v, cache.lengths_B)


def init_cache(config: ModelConfig, batch: int, max_length: int, dtype: Any = None) -> Cache:
    shape = (config.num_layers, batch, max_length, config.num_kv_heads, config.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return Cache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))


# ----------------------------------------------------------------------------- decoder


_REMAT_POLICIES = {
    "full": None,
    # The attention output is a batched matmul's, so named: saving it spares a second attention forward.
    "save_matmuls": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names("attention"),
    ),
}


class Decoder(nn.Module):
    config: ModelConfig
    per_layer: bool = False  # params layers_0, layers_1, ... and a cache per layer (see `per_layer`)

    @nn.compact
    def __call__(self, tokens_BxT, step: _Step, kv_cache, logits_at_B=None, hidden_only=False):
        cfg = self.config
        embedding = _param(self, "embedding", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        x = jnp.take(embedding, tokens_BxT, axis=0).astype(jnp.dtype(cfg.dtype))
        x = constrain(x, ("batch", "length", "act_embed"))

        block = Block
        if cfg.remat != "none" and kv_cache is None:
            block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)

        def body(module, carry, layer_cache):
            carry, layer_cache = module(carry, layer_cache, step)
            return carry, layer_cache

        if self.per_layer:  # the same Block, applied layer by layer, each with its own cache
            caches = []
            for i, layer_cache in enumerate(kv_cache):
                x, layer_cache = Block(cfg, name=f"layers_{i}")(x, layer_cache, step)
                caches.append(layer_cache)
            kv_cache = tuple(caches)
        elif kv_cache is not None and not self.is_initializing():
            # Prefill and decode: layer i (a Python int) runs on its slice of the stacked params and
            # writes its new K/V into the whole stacked cache, which it reads back at [i]: static
            # indices, so the compiler updates the cache in place and reads one layer's slice inside the
            # attention fusions. Scanning the cache as xs/ys (unrolled) sliced it into layers and
            # concatenated them back on every call: on a TPU decode step (qwen2_5_3b, 4 layers, v5e:4x8)
            # slice and concatenate fusions read and wrote the whole 207 MB cache twice per token.
            stacked_params = self.variables["params"]["layers"]
            for i in range(cfg.num_layers):
                layer_params = jax.tree.map(lambda w, i=i: w[i], stacked_params)
                x, (k, v, _) = Block(cfg, parent=None).apply({"params": layer_params}, x, (*kv_cache, i), step)
                kv_cache = (k, v)
        else:
            scan = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=0,
                out_axes=0,
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, kv_cache = scan(block(cfg, name="layers"), x, kv_cache)
        if logits_at_B is not None:  # the LM head at one position per row only
            x = jnp.take_along_axis(x, logits_at_B[:, None, None], axis=1)
        x = RMSNorm(cfg, name="final_norm")(x)
        if hidden_only:  # the caller applies the head (the trainer's loss, chunk by chunk)
            return x, kv_cache
        if cfg.tie_embeddings:
            head = embedding.T
        else:
            head = _param(self, "lm_head", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))
        logits = jnp.einsum("BTD,DV->BTV", x, head.astype(x.dtype), preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "act_vocab")), kv_cache


# ----------------------------------------------------------------------------- public functions


def init_params(config: ModelConfig, key: jax.Array) -> Params:
    """Random params (plain arrays). For sharded init use `sharding`-aware `init_sharded`."""
    return nn.unbox(_boxed_init(config, key))


def _boxed_init(config: ModelConfig, key: jax.Array):
    tokens = jnp.zeros((1, 1), jnp.int32)
    step = _causal_step(tokens.shape, None, None)
    return Decoder(config).init(key, tokens, step, None)["params"]


def param_logical_axes(config: ModelConfig) -> Any:
    """Pytree (matching params) of PartitionSpecs holding logical axis names."""
    abstract = jax.eval_shape(functools.partial(_boxed_init, config), jax.random.key(0))
    return nn.get_partition_spec(abstract)


def init_sharded(config: ModelConfig, key: jax.Array, mesh) -> Params:
    """Initialises params directly into their shardings (no full copy on any device)."""
    from drift_jax.lm import sharding

    abstract = jax.eval_shape(functools.partial(init_params, config), key)
    shardings = sharding.tree_shardings(mesh, param_logical_axes(config), abstract)
    return jax.jit(functools.partial(init_params, config), out_shardings=shardings)(key)


def _causal_step(shape, positions_BxT, segment_ids_BxT) -> _Step:
    b, t = shape
    if positions_BxT is None:
        positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = jnp.tril(jnp.ones((t, t), bool))[None]
    if segment_ids_BxT is not None:
        mask = mask & (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])
    return _Step(positions_BxT, jnp.broadcast_to(mask, (b, t, t)), None)


def forward(
    params: Params,
    config: ModelConfig,
    tokens_BxT: jax.Array,
    *,
    positions_BxT: jax.Array | None = None,
    segment_ids_BxT: jax.Array | None = None,
    cache: Cache | LayerCaches | None = None,
    num_new_B: jax.Array | None = None,
    logits_at_B: jax.Array | None = None,
) -> tuple[jax.Array, Cache | LayerCaches | None]:
    """Runs the decoder. Without a cache: causal (optionally packed) forward. With a cache: appends
    `num_new_B` (default: all T) tokens per row at the row's current length and attends to its prefix
    (a `LayerCaches` with `per_layer` params runs the same layers one by one).
    Returns float32 logits [B, T, V] and the updated cache; with `logits_at_B` (int [B], positions in
    0..T-1) only row b's logits at position logits_at_B[b]: [B, 1, V] (a prefill needs no more)."""
    tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
    b, t = tokens_BxT.shape
    if cache is None:
        step = _causal_step((b, t), positions_BxT, segment_ids_BxT)
        logits, _ = Decoder(config).apply({"params": params}, tokens_BxT, step, None, logits_at_B)
        return logits, None
    if num_new_B is None:
        num_new_B = jnp.full((b,), t, jnp.int32)
    s = cache.max_length
    offsets_T = jnp.arange(t, dtype=jnp.int32)
    positions = cache.lengths_B[:, None] + offsets_T
    write_pos = jnp.where(offsets_T < num_new_B[:, None], positions, s)  # s = out of range: dropped
    mask = jnp.arange(s)[None, None, :] <= positions[:, :, None]
    lengths = jnp.minimum(cache.lengths_B + num_new_B.astype(jnp.int32), s)
    if isinstance(cache, LayerCaches):  # params from `per_layer` too
        step = _Step(positions, mask, write_pos, "BKHS")
        logits, kv = Decoder(config, per_layer=True).apply(
            {"params": params}, tokens_BxT, step, tuple(zip(cache.k, cache.v)), logits_at_B
        )
        return logits, LayerCaches(tuple(k for k, _ in kv), tuple(v for _, v in kv), lengths)
    step = _Step(positions, mask, write_pos)
    logits, (k, v) = Decoder(config).apply(
        {"params": params}, tokens_BxT, step, (cache.k_LxBxSxKxH, cache.v_LxBxSxKxH), logits_at_B
    )
    return logits, Cache(k, v, lengths)


def hidden_states(
    params: Params, config: ModelConfig, tokens_BxT: jax.Array, *,
    positions_BxT: jax.Array | None = None, segment_ids_BxT: jax.Array | None = None,
) -> jax.Array:
    """The full causal forward up to the LM head: final-normed hidden states [B, T, D] in the compute
    dtype. `forward`'s logits are `einsum('BTD,DV->BTV', x, output_head(...))` of these, in float32."""
    tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
    step = _causal_step(tokens_BxT.shape, positions_BxT, segment_ids_BxT)
    x_BxTxD, _ = Decoder(config).apply({"params": params}, tokens_BxT, step, None, None, True)
    return x_BxTxD


def output_head(params: Params, config: ModelConfig) -> jax.Array:
    """The LM head [D, V]: the embedding's transpose when tied."""
    return params["embedding"].T if config.tie_embeddings else params["lm_head"]


@functools.partial(jax.jit, static_argnames="config")
def _logits_jit(params, config, tokens_BxT):
    return forward(params, config, tokens_BxT)[0]


def logits(params: Params, config: ModelConfig, tokens_BxT: jax.Array) -> jax.Array:
    """Full causal forward, no cache: float32 logits [B, T, V]."""
    return _logits_jit(params, config, jnp.asarray(tokens_BxT, jnp.int32))
