"""The decoder's layers (Flax Linen): RMSNorm, attention over the KV cache, the SwiGLU MLP, a pre-norm Block.

Einsum letters: B batch, T query length, D embed, N query heads, K kv heads, H head dim, F mlp hidden
(in the merged-heads output projection: N*H), X = B*T tokens.
`model.Decoder` stacks the Blocks (scanned, unrolled over a stacked cache, or one per layer) and
`model.forward` builds the `_Step` that every layer of a call shares.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from drift_jax.lm import attention
from drift_jax.lm.rope import apply_rope, rope_inv_freq
from drift_jax.lm.sharding import constrain

if TYPE_CHECKING:  # a type only: model imports this module
    from drift_jax.lm.model import ModelConfig


def _param(module: nn.Module, name: str, shape: tuple, names: tuple, init=None) -> jax.Array:
    cfg: ModelConfig = module.config
    init = init or nn.initializers.normal(0.02)
    return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.dtype(cfg.param_dtype))


class RMSNorm(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", (self.config.hidden_size,), ("embed",), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_norm_eps)
        return (x32 * scale.astype(jnp.float32)).astype(jnp.dtype(self.config.dtype))


@dataclasses.dataclass(frozen=True)
class _Step:
    """Per-call attention context shared by all layers (broadcast through the layer scan)."""

    positions_BxT: jax.Array
    mask_BxTxS: jax.Array
    write_pos_BxT: jax.Array | None  # None: no cache
    layout: str = "BSKH"  # the K and V layouts: "BSKH" (stacked) or "BKHS" (LayerCaches); see attention.attend


jax.tree_util.register_dataclass(
    _Step, data_fields=["positions_BxT", "mask_BxTxS", "write_pos_BxT"], meta_fields=["layout"]
)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, step: _Step, kv_cache):
        cfg = self.config
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt = jnp.dtype(cfg.dtype)
        wq = _param(self, "q", (d, n, h), ("embed", "heads", "head_dim"))
        wk = _param(self, "k", (d, k, h), ("embed", "kv_heads", "head_dim"))
        wv = _param(self, "v", (d, k, h), ("embed", "kv_heads", "head_dim"))
        wo = _param(self, "o", (n, h, d), ("heads", "head_dim", "embed"))
        q = jnp.einsum("BTD,DNH->BTNH", x_BxTxD, wq.astype(dt))
        kk = jnp.einsum("BTD,DKH->BTKH", x_BxTxD, wk.astype(dt))
        vv = jnp.einsum("BTD,DKH->BTKH", x_BxTxD, wv.astype(dt))
        if cfg.qkv_bias:
            zeros = nn.initializers.zeros
            q = q + _param(self, "q_bias", (n, h), ("heads", "head_dim"), zeros).astype(dt)
            kk = kk + _param(self, "k_bias", (k, h), ("kv_heads", "head_dim"), zeros).astype(dt)
            vv = vv + _param(self, "v_bias", (k, h), ("kv_heads", "head_dim"), zeros).astype(dt)
        inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        q = apply_rope(q, step.positions_BxT, inv_freq)
        kk = apply_rope(kk, step.positions_BxT, inv_freq)
        q = constrain(q, ("batch", "length", "act_heads", "head_dim"))

        if kv_cache is not None:
            rows_B1, pos_BxT = jnp.arange(x_BxTxD.shape[0])[:, None], step.write_pos_BxT
            # Out-of-range write positions (padding tokens) are dropped, never written.
            if step.layout == "BSKH":  # the whole stacked [L, B, S, K, H] cache and this layer's index
                k_all, v_all, layer = kv_cache
                k_all = k_all.at[layer, rows_B1, pos_BxT].set(kk.astype(k_all.dtype), mode="drop")
                v_all = v_all.at[layer, rows_B1, pos_BxT].set(vv.astype(v_all.dtype), mode="drop")
                k_cache, v_cache, kv_cache = k_all[layer], v_all[layer], (k_all, v_all, layer)
            else:  # "BKHS": K [B, K, H, S], V [B, K, S, H]; the indexed axes lead: [B, T, K, H]
                k_cache, v_cache = kv_cache
                k_cache = k_cache.at[rows_B1, :, :, pos_BxT].set(kk.astype(k_cache.dtype), mode="drop")
                v_cache = v_cache.at[rows_B1, :, pos_BxT].set(vv.astype(v_cache.dtype), mode="drop")
                kv_cache = (k_cache, v_cache)
            keys, values = k_cache.astype(dt), v_cache.astype(dt)
        else:
            keys, values = kk, vv

        if kv_cache is None:  # training / full forward: causal query blocks, rematerialised
            out = checkpoint_name(attention.causal_blocks(q, keys, values, step.mask_BxTxS), "attention")
        else:
            out = attention.attend(q, keys, values, step.mask_BxTxS, step.layout)
        if step.layout == "BKHS":  # heads merged: else XLA:CPU transposes wo on every decode step
            out_BxTxF = out.reshape(*out.shape[:2], n * h)
            return jnp.einsum("BTF,FD->BTD", out_BxTxF, wo.reshape(n * h, d).astype(dt)), kv_cache
        return jnp.einsum("BTNH,NHD->BTD", out, wo.astype(dt)), kv_cache


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.config
        dt = jnp.dtype(cfg.dtype)
        d, f = cfg.hidden_size, cfg.mlp_dim
        # Tokens flattened to one axis X = B*T: with [B, T, F] activations the CPU backend feeds the
        # weight-gradient dot a transposed copy of dL/d(gate, up) (16 MB per layer, ~40% of the step).
        b, t = x_BxTxD.shape[:2]
        x_XxD = x_BxTxD.reshape(b * t, d)
        gate = jnp.einsum("XD,DF->XF", x_XxD, _param(self, "gate", (d, f), ("embed", "mlp")).astype(dt))
        up = jnp.einsum("XD,DF->XF", x_XxD, _param(self, "up", (d, f), ("embed", "mlp")).astype(dt))
        hidden = constrain(nn.silu(gate) * up, ("batch", "act_mlp"))
        y_XxD = jnp.einsum("XF,FD->XD", hidden, _param(self, "down", (f, d), ("mlp", "embed")).astype(dt))
        return y_XxD.reshape(b, t, d)


class Block(nn.Module):
    """One pre-norm transformer layer; `__call__(carry, xs)` so it can be scanned over layers."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, kv_cache, step: _Step):
        h, kv_cache = Attention(self.config, name="attn")(RMSNorm(self.config, name="attn_norm")(x_BxTxD), step, kv_cache)
        x_BxTxD = x_BxTxD + h
        x_BxTxD = x_BxTxD + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x_BxTxD))
        return constrain(x_BxTxD, ("batch", "length", "act_embed")), kv_cache
