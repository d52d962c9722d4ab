"""The sampler's state and its layout: KV cache and next-token logits (`DecodeState`) in the rollout table.

`RULES` is the sampler's table; `rollout_params` moves params into it once per stage and `init_state`
makes an empty state directly in its shardings. The jitted calls that fill and advance a state
(`extend`, `refill`, `decode_chunk`, ...) are in `sampling`.
"""

from __future__ import annotations

import contextlib
import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from drift_jax.lm import sharding
from drift_jax.lm.model import CACHE_LOGICAL, Cache, ModelConfig, Params, init_cache, param_logical_axes

RULES = sharding.ROLLOUT_RULES  # the sampler's layout: parameters never split over fsdp


@flax.struct.dataclass
class DecodeState:
    """KV cache plus the float32 logits of the next token of each row (after its last cached token)."""

    cache: Cache
    logits_BxV: jax.Array


STATE_LOGICAL = DecodeState(cache=CACHE_LOGICAL, logits_BxV=("batch", "act_vocab"))


# ----------------------------------------------------------------------------- layout


def _shardings(mesh: Mesh | None, logical, abstract):
    if mesh is None:
        return None
    specs = jax.tree.map(lambda n: PartitionSpec(*n), logical, is_leaf=lambda n: isinstance(n, tuple))
    with sharding.use_rules(RULES):
        return sharding.tree_shardings(mesh, specs, abstract)


def _state_shardings(mesh: Mesh | None, config: ModelConfig, batch: int, max_length: int):
    abstract = jax.eval_shape(lambda: _empty_state(config, batch, max_length))
    return _shardings(mesh, STATE_LOGICAL, abstract)


def _rows(mesh: Mesh | None, shape) -> jax.sharding.Sharding | None:
    """Row-sharded (a scalar: replicated)."""
    if mesh is None:
        return None
    names = ("batch",) + (None,) * (len(shape) - 1) if shape else ()
    with sharding.use_rules(RULES):
        return sharding.named_sharding(mesh, names, shape)


@contextlib.contextmanager
def _in_layout(mesh: Mesh | None):
    with sharding.use_rules(RULES), (jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()):
        yield


def cache_dtype(config: ModelConfig) -> jnp.dtype:
    """The KV cache is kept in the compute dtype (bf16 when the model computes in bf16)."""
    return jnp.dtype(config.dtype)


def rollout_params(params: Params, config: ModelConfig, mesh: Mesh | None) -> Params:
    """Params resharded once per rollout or eval stage from the training layout to the sampler's
    (no fsdp split), and cast to the compute dtype (the forward casts every weight to it anyway)."""
    dt = jnp.dtype(config.dtype)
    params = jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    if mesh is None:
        return params
    logical = param_logical_axes(config)
    abstract = jax.eval_shape(lambda: params)
    with sharding.use_rules(RULES):
        shardings = sharding.tree_shardings(mesh, logical, abstract)
    return jax.device_put(params, shardings)


# ----------------------------------------------------------------------------- state


def _empty_state(config: ModelConfig, batch: int, max_length: int) -> DecodeState:
    logits_BxV = jnp.zeros((batch, config.vocab_size), jnp.float32)
    return DecodeState(init_cache(config, batch, max_length, cache_dtype(config)), logits_BxV)


def init_state(config: ModelConfig, batch: int, max_length: int, *, mesh: Mesh | None = None) -> DecodeState:
    """An empty state, created directly in its shardings (rows over data x fsdp, kv heads over tensor)."""
    return _init_fn(config, mesh, batch, max_length)()


@functools.lru_cache(maxsize=64)
def _init_fn(config: ModelConfig, mesh: Mesh | None, batch: int, max_length: int):
    out = _state_shardings(mesh, config, batch, max_length)
    return jax.jit(functools.partial(_empty_state, config, batch, max_length), out_shardings=out)
