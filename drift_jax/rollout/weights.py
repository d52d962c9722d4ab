"""DRIFT importance weights w = exp(R/beta) / Z, normalised per prompt group, plus diagnostics.

The reference normalises within each group of K rollouts of one prompt: w_k = K softmax(R/beta)_k,
mean 1 per group. Everything here is vectorised over ragged groups with segment ops under one jit;
arbitrary group ids (hashes, unsorted, non-contiguous) are remapped to 0..G-1 on the host.

Policies beyond the reference:
- normalize="batch": one normaliser for the whole batch (mean 1 over the batch), so a group's mass
  reflects how good its rollouts are compared with everyone else's.
- all_fail, for groups with no successful rollout:
  "keep"  - the reference: mean-1 weights like any group.
  "drop"  - weight 0.
  "batch" - normalise those groups against the whole batch instead of within the group, so their
            mass is small when other groups succeed and mean 1 when the whole batch fails.
  Success is an explicit boolean `success_N` if given, else `returns > fail_threshold`.
- clip: weights are truncated at `clip` and NOT renormalised (truncated importance weights). The
  trainer divides the loss by the global weight mass anyway, so renormalising here would only hide
  how much mass the clip removed (visible in `weight_diagnostics`).
"""
from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Normalize = Literal["group", "batch"]
AllFail = Literal["keep", "drop", "batch"]


def _group_max(x_N: jax.Array, seg_N: jax.Array, num_segments: int) -> jax.Array:
    return jax.ops.segment_max(x_N, seg_N, num_segments=num_segments)[seg_N]


def _shifted_exp(logits_N: jax.Array, max_N: jax.Array) -> jax.Array:
    """exp(logits - max) in (0, 1]; elements equal to the max give exactly 1, even when both are
    +-inf, so a group of all -inf (or all +inf) returns is uniform instead of NaN."""
    return jnp.where(logits_N == max_N, 1.0, jnp.exp(logits_N - max_N))


@functools.partial(jax.jit, static_argnames=("num_segments", "normalize", "all_fail"))
def _drift_weights(
    returns_N: jax.Array,
    seg_N: jax.Array,
    success_N: jax.Array,
    beta: jax.Array,
    clip: jax.Array,
    *,
    num_segments: int,
    normalize: Normalize,
    all_fail: AllFail,
) -> jax.Array:
    """Core over segment ids 0..num_segments-1; beta and clip are traced, so no recompiles."""
    logits_N = returns_N / beta
    ones_N = jnp.ones_like(logits_N)
    count_G = jax.ops.segment_sum(ones_N, seg_N, num_segments=num_segments)
    group_ok_N = (jax.ops.segment_max(success_N.astype(jnp.int32), seg_N, num_segments) > 0)[seg_N]
    keep_N = group_ok_N | (all_fail != "drop")
    # Dropped rows must not enter any max or normaliser.
    logits_N = jnp.where(keep_N, logits_N, -jnp.inf)

    # Batch normaliser: shift by the global max over kept rows, mean over kept rows.
    batch_max = jnp.max(logits_N)
    batch_exp_N = jnp.where(keep_N, _shifted_exp(logits_N, batch_max), 0.0)
    batch_w_N = batch_exp_N * jnp.maximum(keep_N.sum(), 1) / jnp.maximum(batch_exp_N.sum(), 1e-30)

    if normalize == "batch":
        w_N = batch_w_N
    else:
        group_exp_N = _shifted_exp(logits_N, _group_max(logits_N, seg_N, num_segments))
        # >= 1 for every group (its max element contributes exactly 1), so no division by 0.
        group_sum_G = jax.ops.segment_sum(group_exp_N, seg_N, num_segments=num_segments)
        w_N = group_exp_N * (count_G / group_sum_G)[seg_N]
        if all_fail == "batch":
            w_N = jnp.where(group_ok_N, w_N, batch_w_N)
    w_N = jnp.where(keep_N, w_N, 0.0)
    return jnp.minimum(w_N, clip)


def _prepare(
    returns_N: np.ndarray | jax.Array,
    group_ids_N: np.ndarray | jax.Array,
    success_N: np.ndarray | jax.Array | None,
    fail_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Host side: validate, remap ids to 0..G-1, derive success."""
    returns_N = np.asarray(returns_N, dtype=np.float64).reshape(-1)
    group_ids_N = np.asarray(group_ids_N).reshape(-1)
    if returns_N.shape != group_ids_N.shape:
        raise ValueError(f"returns {returns_N.shape} vs group_ids {group_ids_N.shape}")
    if np.isnan(returns_N).any():
        raise ValueError("returns contain NaN")
    _, seg_N = np.unique(group_ids_N, return_inverse=True)
    seg_N = seg_N.reshape(-1).astype(np.int32)
    num_segments = int(seg_N.max()) + 1 if seg_N.size else 0
    if success_N is None:
        success_N = returns_N > fail_threshold
    success_N = np.asarray(success_N, dtype=bool).reshape(-1)
    if success_N.shape != returns_N.shape:
        raise ValueError(f"success {success_N.shape} vs returns {returns_N.shape}")
    return returns_N, seg_N, success_N, num_segments


def drift_weights(
    returns_N: np.ndarray | jax.Array,
    group_ids_N: np.ndarray | jax.Array,
    beta: float,
    *,
    normalize: Normalize = "group",
    all_fail: AllFail = "keep",
    clip: float | None = None,
    success_N: np.ndarray | jax.Array | None = None,
    fail_threshold: float = 0.0,
) -> jax.Array:
    """One weight per trajectory; default w_k = exp(R_k/beta) / mean_{j in group} exp(R_j/beta)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if normalize not in ("group", "batch"):
        raise ValueError(f"unknown normalize {normalize!r}")
    if all_fail not in ("keep", "drop", "batch"):
        raise ValueError(f"unknown all_fail {all_fail!r}")
    returns_N, seg_N, success_N, num_segments = _prepare(
        returns_N, group_ids_N, success_N, fail_threshold)
    if num_segments == 0:
        return jnp.zeros((0,), jnp.float32)
    return _drift_weights(
        jnp.asarray(returns_N, jnp.float32), jnp.asarray(seg_N), jnp.asarray(success_N),
        jnp.float32(beta), jnp.float32(np.inf if clip is None else clip),
        num_segments=num_segments, normalize=normalize, all_fail=all_fail)


def _ess(sum_w, sum_sq):
    """Effective sample size (sum w)^2 / sum w^2 from the two sums; 0 where every weight is 0.
    numpy on the host (diagnostics) or jax inside the jitted beta search."""
    xp = jnp if isinstance(sum_w, jax.Array) else np
    live = sum_sq > 0
    return xp.where(live, sum_w**2 / xp.where(live, sum_sq, 1.0), 0.0)


def weight_diagnostics(
    weights_N: np.ndarray | jax.Array, group_ids_N: np.ndarray | jax.Array, *, bins: int = 20
) -> dict[str, np.ndarray | float]:
    """ESS per group (in sorted group-id order) and overall, top-weight share, histogram."""
    w_N = np.asarray(weights_N, dtype=np.float64).reshape(-1)
    ids_G, seg_N = np.unique(np.asarray(group_ids_N).reshape(-1), return_inverse=True)
    seg_N = seg_N.reshape(-1)
    size_G = np.bincount(seg_N, minlength=ids_G.size)
    sum_G = np.bincount(seg_N, weights=w_N, minlength=ids_G.size)
    sq_G = np.bincount(seg_N, weights=w_N**2, minlength=ids_G.size)
    ess_G = _ess(sum_G, sq_G)
    ess = float(_ess(w_N.sum(), (w_N**2).sum()))
    total = w_N.sum()
    counts, edges = np.histogram(w_N, bins=bins)
    return {
        "group_ids": ids_G,
        "ess_per_group": ess_G,
        "ess_fraction_per_group": ess_G / size_G,
        "ess": ess,
        "ess_fraction": ess / max(w_N.size, 1),
        "max_share": float(w_N.max() / total) if total > 0 else 0.0,
        "mass": float(total),
        "hist_counts": counts,
        "hist_edges": edges,
    }


@functools.partial(jax.jit, static_argnames=("num_segments", "normalize", "all_fail", "kind"))
def _ess_fraction(
    log_beta: jax.Array, returns_N: jax.Array, seg_N: jax.Array, success_N: jax.Array, *,
    num_segments: int, normalize: Normalize, all_fail: AllFail, kind: str,
) -> jax.Array:
    w_N = _drift_weights(returns_N, seg_N, success_N, jnp.exp(log_beta), jnp.float32(jnp.inf),
                         num_segments=num_segments, normalize=normalize, all_fail=all_fail)
    if kind == "overall":
        return _ess(w_N.sum(), (w_N**2).sum()) / w_N.size
    sum_G = jax.ops.segment_sum(w_N, seg_N, num_segments)
    sq_G = jax.ops.segment_sum(w_N**2, seg_N, num_segments)
    size_G = jax.ops.segment_sum(jnp.ones_like(w_N), seg_N, num_segments)
    live_G = sq_G > 0  # dropped groups have no mass and no ESS to speak of
    return (_ess(sum_G, sq_G) / size_G).sum() / jnp.maximum(live_G.sum(), 1)


@functools.partial(
    jax.jit, static_argnames=("iters", "num_segments", "normalize", "all_fail", "kind"))
def _bisect_log_beta(
    lo: jax.Array, hi: jax.Array, target: jax.Array,
    returns_N: jax.Array, seg_N: jax.Array, success_N: jax.Array, *,
    iters: int, num_segments: int, normalize: Normalize, all_fail: AllFail, kind: str,
) -> jax.Array:
    static = dict(num_segments=num_segments, normalize=normalize, all_fail=all_fail, kind=kind)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        # ESS rises with beta: too little ESS means the answer lies above mid.
        below = _ess_fraction(mid, returns_N, seg_N, success_N, **static) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (lo + hi)


def beta_for_ess(
    returns_N: np.ndarray | jax.Array,
    group_ids_N: np.ndarray | jax.Array,
    target: float,
    *,
    kind: Literal["group", "overall"] = "group",
    normalize: Normalize = "group",
    all_fail: AllFail = "keep",
    success_N: np.ndarray | jax.Array | None = None,
    fail_threshold: float = 0.0,
    beta_range: tuple[float, float] = (1e-4, 1e4),
    iters: int = 40,
) -> float:
    """Beta whose weights reach an ESS fraction `target` in (0, 1], by bisection in log-beta.

    kind="group": mean over groups (with nonzero mass) of ESS_g / size_g;
    kind="overall": ESS of the whole batch / N. Both rise monotonically with beta. A target below
    what `beta_range` reaches returns its low end; above, its high end (a target of 1 gives the
    smallest beta at which float32 ESS rounds to 1).
    """
    returns_N, seg_N, success_N, num_segments = _prepare(
        returns_N, group_ids_N, success_N, fail_threshold)
    log_beta = _bisect_log_beta(
        jnp.float32(np.log(beta_range[0])), jnp.float32(np.log(beta_range[1])),
        jnp.float32(target), jnp.asarray(returns_N, jnp.float32), jnp.asarray(seg_N),
        jnp.asarray(success_N), iters=iters, num_segments=num_segments, normalize=normalize,
        all_fail=all_fail, kind=kind)
    return float(np.exp(log_beta))
