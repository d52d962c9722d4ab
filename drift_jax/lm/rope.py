"""Rotary position embeddings: inverse frequencies (default, linear and llama3 scaling) and their rotation."""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp


def rope_inv_freq(head_dim: int, theta: float, scaling: tuple | None) -> jax.Array:
    """Inverse frequencies of the head_dim / 2 rotary pairs; `scaling` as `ModelConfig.rope_scaling`."""
    h = head_dim
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    if scaling is None:
        return inv_freq
    if scaling[0] == "linear":
        return inv_freq / scaling[1]
    if scaling[0] == "llama3":
        _, factor, low, high, old_len = scaling
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope scaling {scaling[0]!r}")


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, inv_freq: jax.Array) -> jax.Array:
    # HF's "rotate_half" layout (first half / second half), so HF weights need no permutation.
    angles_BxTxH2 = positions_BxT[..., None].astype(jnp.float32) * inv_freq
    cos, sin = jnp.cos(angles_BxTxH2)[:, :, None], jnp.sin(angles_BxTxH2)[:, :, None]
    x = x_BxTxNxH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxH.dtype)
