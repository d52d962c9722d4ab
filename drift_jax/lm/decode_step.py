"""One decode step of the sampler, written for speed: per-layer weights prepared once, a per-layer KV cache.

`model.forward` with a cache computes the same thing; this version exists for speed only. The scanned
model re-slices every layer's weights and re-stacks the cache on every step; here the layers are
sliced, cast and q|k|v fused once per decode call (`layer_weights`), and the cache is carried per layer
as K [B, K, H, S] and V [B, K, S, H], so attention is two plain (untransposed) batched matmuls. gate and
up stay two matmuls: XLA:CPU runs them concurrently, one per core, faster than one fused [D, 2F] matmul
split across cores. Tests pin it (through `sampling.decode`) to the full forward and to transformers;
it must follow any new model feature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from drift_jax.lm import sharding
from drift_jax.lm.model import ModelConfig, RMSNorm
from drift_jax.lm.rope import apply_rope, rope_inv_freq


def layer_weights(params, cfg: ModelConfig) -> list[dict]:
    """Per-layer weights for the decode loop: sliced, cast and q|k|v fused once per call."""
    dt = jnp.dtype(cfg.dtype)
    d = cfg.hidden_size
    layers = []
    for i in range(cfg.num_layers):
        p = jax.tree.map(lambda x: x[i].astype(dt), params["layers"])
        a = p["attn"]
        qkv = [a["q"].reshape(d, -1), a["k"].reshape(d, -1), a["v"].reshape(d, -1)]
        fused = {
            "attn_norm": p["attn_norm"], "mlp_norm": p["mlp_norm"],
            "qkv": jnp.concatenate(qkv, axis=1), "o": a["o"].reshape(-1, d),
            "gate": p["mlp"]["gate"], "up": p["mlp"]["up"], "down": p["mlp"]["down"],
        }
        if cfg.qkv_bias:
            fused["qkv_bias"] = jnp.concatenate([a[f"{n}_bias"].reshape(-1) for n in "qkv"])
        layers.append(fused)
    return layers


def _attend_one(cfg: ModelConfig, p, x_BxD, k_BxKxHxS, v_BxKxSxH, positions_Bx1, write_B, mask_BxS):
    n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    b = x_BxD.shape[0]
    qkv = x_BxD @ p["qkv"]
    if cfg.qkv_bias:
        qkv = qkv + p["qkv_bias"]
    q = qkv[:, : n * h].reshape(b, 1, n, h)
    kk = qkv[:, n * h : (n + k) * h].reshape(b, 1, k, h)
    vv = qkv[:, (n + k) * h :].reshape(b, k, h)
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    q, kk = apply_rope(q, positions_Bx1, inv_freq), apply_rope(kk, positions_Bx1, inv_freq)
    rows_B = jnp.arange(b)
    k_BxKxHxS = k_BxKxHxS.at[rows_B, :, :, write_B].set(kk[:, 0].astype(k_BxKxHxS.dtype), mode="drop")
    v_BxKxSxH = v_BxKxSxH.at[rows_B, :, write_B].set(vv.astype(v_BxKxSxH.dtype), mode="drop")
    # The loop's cache layouts (see sampling._decode) make both products plain batched matmuls.
    q_BxKxGxH = (q.reshape(b, k, n // k, h).astype(jnp.float32) / np.sqrt(h)).astype(x_BxD.dtype)
    scores = jnp.einsum("BKGH,BKHS->BKGS", q_BxKxGxH, k_BxKxHxS.astype(x_BxD.dtype),
                        preferred_element_type=jnp.float32)
    scores = jnp.where(mask_BxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(x_BxD.dtype)
    out_BxKxGxH = jnp.einsum("BKGS,BKSH->BKGH", probs, v_BxKxSxH.astype(x_BxD.dtype))
    return out_BxKxGxH.reshape(b, n * h) @ p["o"], k_BxKxHxS, v_BxKxSxH


def _rms_norm(cfg: ModelConfig, x, scale):
    return RMSNorm(cfg).apply({"params": {"scale": scale}}, x)


def step_logits(params, layers: list, cfg: ModelConfig, tok_B, kv: list, lengths_B, num_new_B):
    """Next-token logits after feeding tok_B (written to the cache where num_new_B is 1)."""
    s = kv[0][1].shape[2]
    positions_Bx1 = lengths_B[:, None]
    write_B = jnp.where(num_new_B > 0, lengths_B, s)  # s: dropped, never written
    mask_BxS = jnp.arange(s)[None, :] <= positions_Bx1
    x_BxD = jnp.take(params["embedding"], tok_B, axis=0).astype(jnp.dtype(cfg.dtype))
    new_kv = []
    for p, (k_cache, v_cache) in zip(layers, kv):
        normed = _rms_norm(cfg, x_BxD, p["attn_norm"]["scale"])
        y, k_cache, v_cache = _attend_one(
            cfg, p, normed, k_cache, v_cache, positions_Bx1, write_B, mask_BxS
        )
        x_BxD = x_BxD + y
        normed = _rms_norm(cfg, x_BxD, p["mlp_norm"]["scale"])
        gate, up = normed @ p["gate"], normed @ p["up"]
        x_BxD = sharding.constrain(x_BxD + (jax.nn.silu(gate) * up) @ p["down"], ("batch", "act_embed"))
        new_kv.append((k_cache, v_cache))
    x_BxD = _rms_norm(cfg, x_BxD, params["final_norm"]["scale"])
    head = params["embedding"].T if cfg.tie_embeddings else params["lm_head"]
    logits_BxV = jnp.einsum("BD,DV->BV", x_BxD, head.astype(x_BxD.dtype), preferred_element_type=jnp.float32)
    return sharding.constrain(logits_BxV, ("batch", "act_vocab")), new_kv
