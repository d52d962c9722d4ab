"""One token per row from next-token logits: greedy, or temperature with top-k / top-p; per-row keys only."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How tokens are chosen; static (hashable) so greedy decoding compiles without the sort."""

    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0  # emitted by rows that have stopped

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sample_tokens(logits_BxV: jax.Array, keys_B: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row; row b uses only keys_B[b] (no cross-row randomness)."""
    if sampling.greedy:
        # argmax as max + first matching index: two plain reductions, ~4x faster than XLA:CPU's
        # variadic argmax reduce. NaN positions match too, so a NaN row gives its first NaN as argmax does.
        max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
        iota_V = jnp.arange(logits_BxV.shape[-1], dtype=jnp.int32)
        hit_BxV = (logits_BxV == max_Bx1) | jnp.isnan(logits_BxV)
        return jnp.min(jnp.where(hit_BxV, iota_V, logits_BxV.shape[-1] - 1), axis=-1)
    return jax.vmap(functools.partial(_sample_row, sampling=sampling))(logits_BxV, keys_B)


def _sample_row(logits_V: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    logits_V = logits_V.astype(jnp.float32) / sampling.temperature
    neg = jnp.finfo(jnp.float32).min
    if sampling.top_k > 0 or sampling.top_p < 1.0:
        sorted_V = jnp.sort(logits_V)[::-1]
        if sampling.top_k > 0:
            kth = sorted_V[min(sampling.top_k, logits_V.shape[0]) - 1]
            logits_V = jnp.where(logits_V < kth, neg, logits_V)
            sorted_V = jnp.where(sorted_V < kth, neg, sorted_V)
        if sampling.top_p < 1.0:
            probs_V = jax.nn.softmax(sorted_V)
            before_V = jnp.cumsum(probs_V) - probs_V  # mass strictly above each sorted token
            keep_V = before_V < sampling.top_p  # the first token is always kept
            threshold = jnp.min(jnp.where(keep_V, sorted_V, jnp.inf))
            logits_V = jnp.where(logits_V < threshold, neg, logits_V)
    return jax.random.categorical(key, logits_V).astype(jnp.int32)
