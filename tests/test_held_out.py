"""Tests for drift_jax.evaluation.held_out: multi@k of a tiny policy."""

import numpy as np
import pytest
import rollout_fixture as fx

from drift_jax.evaluation import held_out
from drift_jax.rollout import episodes


def test_evaluate_matches_episodes_and_is_deterministic():
    params, probs = fx.params(4), fx.problems(5)
    ep = episodes.EpisodeConfig(max_turns=3, max_new_tokens=4)
    a = held_out.evaluate(params, fx.CFG, fx.CHAT, probs, ep, rows_per_batch=4)
    b = held_out.evaluate(params, fx.CFG, fx.CHAT, probs, ep, rows_per_batch=8)
    assert a["solved_turns"] == b["solved_turns"] and a["num_problems"] == 5
    recs = episodes.run_episodes(params, fx.CFG, fx.CHAT, probs, [0] * 5, ep)
    assert a["solved_turns"] == [r["solved_turn"] for r in recs]
    assert a["multi@3"] == np.mean([s > 0 for s in a["solved_turns"]])
    with pytest.raises(ValueError, match="greedily"):
        held_out.evaluate(params, fx.CFG, fx.CHAT, probs, episodes.EpisodeConfig(temperature=1.0))
