"""Token choice from logits: top-k/top-p and temperature draw the right distribution (chi-square)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from drift_jax.lm import sample, sampling


@pytest.mark.parametrize(
    "top_k,top_p,allowed",
    # (4, 0.7): top-p acts on the top-k renormalised probabilities (0.44, 0.28, ...), as in transformers.
    [(3, 1.0, [0, 1, 2]), (0, 0.6, [0, 1]), (0, 0.75, [0, 1, 2]), (4, 0.7, [0, 1]), (1, 1.0, [0])],
)
def test_top_k_top_p_distribution(top_k, top_p, allowed):
    # Sorted probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04 on shuffled token ids.
    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    perm = np.array([4, 0, 5, 2, 1, 3])  # token perm[i] has the i-th largest probability
    logits = np.zeros(6, np.float32)
    logits[perm] = np.log(probs)
    n = 6000
    keys = sampling.row_keys(jax.random.key(42), n)
    cfg = sample.Sampling(temperature=1.0, top_k=top_k, top_p=top_p)
    draws = np.asarray(sample.sample_tokens(jnp.broadcast_to(jnp.asarray(logits), (n, 6)), keys, cfg))
    counts = np.bincount(draws, minlength=6)
    allowed_ids = perm[allowed]
    assert counts[np.setdiff1d(np.arange(6), allowed_ids)].sum() == 0
    expected = probs[allowed] / probs[allowed].sum() * n
    if len(allowed) > 1:
        _, pvalue = stats.chisquare(counts[allowed_ids], expected)
        assert pvalue > 1e-3, (counts, expected)


def test_temperature_changes_the_distribution():
    logits = jnp.log(jnp.array([0.7, 0.2, 0.1]))
    keys = sampling.row_keys(jax.random.key(0), 4000)
    hot = sample.sample_tokens(jnp.broadcast_to(logits, (4000, 3)), keys, sample.Sampling(temperature=2.0))
    # Temperature 2 flattens to p ** 0.5, renormalised.
    expected = np.sqrt([0.7, 0.2, 0.1]) / np.sqrt([0.7, 0.2, 0.1]).sum() * 4000
    _, pvalue = stats.chisquare(np.bincount(np.asarray(hot), minlength=3), expected)
    assert pvalue > 1e-3
