"""Tests for drift_jax.weights: reference values, ragged groups, stability, policies, ESS tools."""
import numpy as np
import pytest

from drift_jax.rollout import weights
from drift_jax.rollout.weights import beta_for_ess, drift_weights, weight_diagnostics

EXAMPLE_R = np.array([1.0, 0.9, 0.656, -0.3])


def reference_weights(returns, beta):
    """The formula of docs/method.md written out plainly, in float64: exp(R/beta) / mean exp(R/beta)."""
    e = np.exp((returns - returns.max()) / beta)
    return e / e.mean()


def loop_reference(returns, group_ids, beta):
    out = np.zeros_like(returns, dtype=np.float64)
    for g in set(group_ids.tolist()):
        idx = np.flatnonzero(group_ids == g)
        out[idx] = reference_weights(returns[idx], beta)
    return out


@pytest.mark.parametrize("beta,expected", [
    (0.1, [2.857, 1.051, 0.092, 0.000]),
    (1.0, [1.386, 1.254, 0.982, 0.378]),
])
def test_reference_example(beta, expected):
    # Golden values of docs/method.md's worked example; if they change, the weight formula changed: fix the code.
    w = np.asarray(drift_weights(EXAMPLE_R, np.zeros(4, int), beta))
    np.testing.assert_allclose(w, expected, atol=5e-4)
    np.testing.assert_allclose(w, reference_weights(EXAMPLE_R, beta), rtol=1e-5, atol=1e-7)
    # Independent of the max shift: the unshifted formula gives the same numbers.
    e = np.exp(EXAMPLE_R / beta)
    np.testing.assert_allclose(w, e / e.mean(), rtol=1e-5, atol=1e-7)
    assert w.mean() == pytest.approx(1.0, rel=1e-6)


def ragged_batch(seed=0):
    rng = np.random.default_rng(seed)
    sizes = [1, 3, 16, 5, 2]
    ids = np.array([10**12 + 7, -3, 99, 4, 2**40])  # hash-like, negative, non-contiguous
    group_ids = np.repeat(ids, sizes)
    returns = rng.choice([1.0, 0.9, 0.81, 0.0, -0.1, -0.35], size=group_ids.size)
    perm = rng.permutation(group_ids.size)
    return returns[perm], group_ids[perm]


@pytest.mark.parametrize("beta", [0.05, 0.3, 2.0])
def test_ragged_groups_equal_per_group_loop(beta):
    returns, group_ids = ragged_batch()
    w = np.asarray(drift_weights(returns, group_ids, beta))
    np.testing.assert_allclose(w, loop_reference(returns, group_ids, beta), rtol=2e-5, atol=1e-6)
    # Mean 1 inside every group; the singleton gets exactly 1.
    for g in np.unique(group_ids):
        assert w[group_ids == g].mean() == pytest.approx(1.0, rel=1e-5)


def test_string_group_ids():
    w = drift_weights(EXAMPLE_R, np.array(["p1", "p2", "p1", "p2"]), 0.5)
    want = loop_reference(EXAMPLE_R, np.array([0, 1, 0, 1]), 0.5)
    np.testing.assert_allclose(np.asarray(w), want, rtol=1e-5)


@pytest.mark.parametrize("beta", [1e-3, 1.0, 1e3])
def test_extreme_returns_stay_finite(beta):
    returns = np.array([1e4, -1e4, 0.0, -1e4, -1e4, 3e38, -3e38, -np.inf, -np.inf])
    group_ids = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3])
    for normalize in ("group", "batch"):
        for all_fail in ("keep", "drop", "batch"):
            w = np.asarray(drift_weights(returns, group_ids, beta, normalize=normalize,
                                         all_fail=all_fail))
            assert np.isfinite(w).all(), (normalize, all_fail, w)
    w = np.asarray(drift_weights(returns, group_ids, beta))
    # Whole-group ties (equal -1e4, or all -inf) are uniform, not NaN.
    np.testing.assert_allclose(w[3:5], [1.0, 1.0])
    np.testing.assert_allclose(w[7:9], [1.0, 1.0])
    np.testing.assert_allclose(w[5:7], [2.0, 0.0])
    if beta == 1e-3:
        np.testing.assert_allclose(w[:3], [3.0, 0.0, 0.0])


def test_small_beta_concentrates_on_best_with_ties_shared():
    returns = np.array([1.0, 1.0, 0.5, 0.0, 0.9, 0.2, 0.3])
    group_ids = np.array([0, 0, 0, 0, 1, 1, 1])
    w = np.asarray(drift_weights(returns, group_ids, 1e-4))
    np.testing.assert_allclose(w, [2.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0], atol=1e-6)


def test_large_beta_tends_to_uniform():
    returns, group_ids = ragged_batch()
    w = np.asarray(drift_weights(returns, group_ids, 1e5))
    np.testing.assert_allclose(w, 1.0, atol=1e-4)


def test_batch_normalisation():
    returns, group_ids = ragged_batch()
    w = np.asarray(drift_weights(returns, group_ids, 0.3, normalize="batch"))
    np.testing.assert_allclose(w, reference_weights(returns, 0.3), rtol=1e-5, atol=1e-7)
    assert w.mean() == pytest.approx(1.0, rel=1e-6)


def test_all_fail_policies():
    # Group 7 succeeds, group 3 has no success (all returns <= 0), group 5 is a failing singleton.
    returns = np.array([1.0, 0.0, -0.1, -0.3, -0.4, -0.2])
    group_ids = np.array([7, 7, 3, 3, 3, 5])
    beta = 0.5
    ok = np.array([True, True, False, False, False, False])
    keep = np.asarray(drift_weights(returns, group_ids, beta, all_fail="keep"))
    np.testing.assert_allclose(keep, loop_reference(returns, group_ids, beta), rtol=1e-5)

    drop = np.asarray(drift_weights(returns, group_ids, beta, all_fail="drop"))
    np.testing.assert_allclose(drop[ok], keep[ok], rtol=1e-6)
    np.testing.assert_array_equal(drop[~ok], 0.0)

    batch = np.asarray(drift_weights(returns, group_ids, beta, all_fail="batch"))
    np.testing.assert_allclose(batch[ok], keep[ok], rtol=1e-6)
    np.testing.assert_allclose(batch[~ok], reference_weights(returns, beta)[~ok], rtol=1e-5)
    # Failing groups get less than their mean-1 share when others succeed.
    assert batch[group_ids == 3].mean() < 1.0 and batch[group_ids == 5].mean() < 1.0

    # If the whole batch fails, "batch" gives the failures mean 1 over the batch.
    all_bad = returns - 2.0
    w = np.asarray(drift_weights(all_bad, group_ids, beta, all_fail="batch"))
    np.testing.assert_allclose(w, reference_weights(all_bad, beta), rtol=1e-5)
    assert np.asarray(drift_weights(all_bad, group_ids, beta, all_fail="drop")).sum() == 0.0


def test_explicit_success_and_threshold():
    returns = np.array([0.2, 0.1, 0.05, 0.0])
    group_ids = np.array([0, 0, 1, 1])
    # By threshold 0 both groups succeed; by threshold 0.15 group 1 fails.
    assert np.asarray(drift_weights(returns, group_ids, 0.1, all_fail="drop")).min() > 0
    w = np.asarray(drift_weights(returns, group_ids, 0.1, all_fail="drop", fail_threshold=0.15))
    np.testing.assert_array_equal(w[2:], 0.0)
    # An explicit success array overrides the threshold.
    success = np.array([False, False, True, False])
    w = np.asarray(drift_weights(returns, group_ids, 0.1, all_fail="drop", success_N=success))
    np.testing.assert_array_equal(w[:2], 0.0)
    assert w[2:].mean() == pytest.approx(1.0, rel=1e-6)


def test_drop_with_batch_normalisation_excludes_dropped_mass():
    returns = np.array([1.0, 0.0, -0.1, -0.3])
    group_ids = np.array([0, 0, 1, 1])
    w = np.asarray(drift_weights(returns, group_ids, 0.5, normalize="batch", all_fail="drop"))
    np.testing.assert_allclose(w[:2], reference_weights(returns[:2], 0.5), rtol=1e-5)
    np.testing.assert_array_equal(w[2:], 0.0)


def test_clip_truncates_without_renormalising():
    unclipped = np.asarray(drift_weights(EXAMPLE_R, np.zeros(4, int), 0.1))
    w = np.asarray(drift_weights(EXAMPLE_R, np.zeros(4, int), 0.1, clip=2.0))
    np.testing.assert_allclose(w, np.minimum(unclipped, 2.0), rtol=1e-6)
    assert w.max() == pytest.approx(2.0)


def test_jit_cache_reused_across_beta_and_clip():
    returns, group_ids = ragged_batch(1)
    drift_weights(returns, group_ids, 0.1)
    size = weights._drift_weights._cache_size()
    drift_weights(returns, group_ids, 0.7, clip=3.0)
    assert weights._drift_weights._cache_size() == size  # beta and clip are traced, not static


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        drift_weights(EXAMPLE_R, np.zeros(4), 0.0)
    with pytest.raises(ValueError):
        drift_weights(np.array([np.nan, 1.0]), np.zeros(2), 0.1)
    with pytest.raises(ValueError):
        drift_weights(EXAMPLE_R, np.zeros(3), 0.1)
    with pytest.raises(ValueError):
        drift_weights(EXAMPLE_R, np.zeros(4), 0.1, all_fail="bogus")


def test_diagnostics():
    ids = np.array([5, 5, 5, 5, 9, 9, 9])
    d = weight_diagnostics(np.ones(7), ids)
    np.testing.assert_allclose(d["ess_per_group"], [4.0, 3.0])
    assert d["ess"] == pytest.approx(7.0) and d["ess_fraction"] == pytest.approx(1.0)
    assert d["max_share"] == pytest.approx(1 / 7)
    one_hot = np.array([4.0, 0, 0, 0, 0, 3.0, 0])
    d = weight_diagnostics(one_hot, ids)
    np.testing.assert_allclose(d["ess_per_group"], [1.0, 1.0])
    np.testing.assert_allclose(d["ess_fraction_per_group"], [0.25, 1 / 3])
    assert d["max_share"] == pytest.approx(4 / 7)
    assert d["hist_counts"].sum() == 7 and d["hist_edges"].size == d["hist_counts"].size + 1
    d = weight_diagnostics(np.array([0.0, 0.0, 1.0]), np.array([0, 0, 1]))
    np.testing.assert_allclose(d["ess_per_group"], [0.0, 1.0])  # a dropped group has ESS 0


@pytest.mark.parametrize("kind", ["group", "overall"])
@pytest.mark.parametrize("target", [0.5, 0.7, 0.9])  # the beta -> 0 limit here is ~0.43
def test_beta_for_ess_hits_target(kind, target):
    returns, group_ids = ragged_batch(2)
    beta = beta_for_ess(returns, group_ids, target, kind=kind)
    d = weight_diagnostics(drift_weights(returns, group_ids, beta), group_ids)
    got = d["ess_fraction_per_group"].mean() if kind == "group" else d["ess_fraction"]
    assert got == pytest.approx(target, abs=1e-3)


def test_beta_for_ess_out_of_range_clamps():
    returns, group_ids = ragged_batch(2)
    # Below the beta -> 0 limit (ties and the singleton keep ESS up): the low end of the range.
    assert beta_for_ess(returns, group_ids, 0.2) == pytest.approx(1e-4, rel=1e-3)
    # ESS fraction 1 is only reached in the limit (float32 rounds there at some large beta).
    beta = beta_for_ess(returns, group_ids, 1.0)
    assert beta > 100.0
    d = weight_diagnostics(drift_weights(returns, group_ids, beta), group_ids)
    assert d["ess_fraction_per_group"].mean() == pytest.approx(1.0, abs=1e-5)
