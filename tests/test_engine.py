"""Rollout engine: equals the previous engine (golden) and the static engine, independent of rows and
mesh, sampler log-probs equal the training forward's, one compile per stage, no weight all-gather."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rollout_fixture as fx

from drift_jax.lm import model, sampling, sharding
from drift_jax.rollout import engine, episodes

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "engine_trajectories.json")


def _golden_params():
    # A peaked policy whose end-of-turn token is as likely as its favourite token: turns both stop and
    # hit their budget.
    params = jax.tree.map(lambda x: 3 * x, fx.params(3))
    params["lm_head"] = params["lm_head"].at[:, fx.CHAT.end_of_turn_id].set(params["lm_head"][:, 123] - 0.3)
    return params


def _tokens(records):
    return [(r["problem_id"], r["sample"], [t["response_ids"] for t in r["turns"]]) for r in records]


def test_engine_equals_the_previous_engine_golden():
    """tests/golden/engine_trajectories.json was written by the engine before this one (static turn
    barrier, hand-written decode step; commit bde7ed1) at temperature 1. If it changes, the sampler's
    randomness or numerics changed: find out why before regenerating it (never just regenerate)."""
    with open(GOLDEN) as f:
        golden = json.load(f)
    cfg = episodes.EpisodeConfig(**golden["episode"])
    rows = [(p, s) for p in fx.problems(5) for s in range(3)]
    recs = episodes.run_episodes(_golden_params(), fx.CFG, fx.CHAT, [p for p, _ in rows], [s for _, s in rows], cfg,
                                 seed=golden["seed"], engine=engine.EngineConfig(rows=4, chunk_steps=5, prompt_buckets=(32, 64)))
    want = golden["records"]
    assert _tokens(recs) == [(r["problem_id"], r["sample"], [t["response_ids"] for t in r["turns"]]) for r in want]
    for r, w in zip(recs, want):
        for t, u in zip(r["turns"], w["turns"]):
            assert t["truncated"] == u["truncated"]
            np.testing.assert_allclose(t["logprobs"], u["logprobs"], atol=1e-5)
