"""Multi-turn episodes: the cache holds exactly the tokens sft_examples rebuilds, keys are per trajectory."""

import jax
import numpy as np
import rollout_fixture as fx

from drift_jax.lm import model
from drift_jax.rollout import episodes, supervision


def test_recorded_logprobs_equal_full_forward_on_rebuilt_tokens():
    """Re-scoring the rebuilt trajectory with one full forward gives the sampler's log-probs: the
    prompt, responses, end-of-turn tokens and feedback sat in the cache exactly as rebuilt."""
    params = fx.params(1)
    cfg = episodes.EpisodeConfig(max_turns=3, max_new_tokens=5, temperature=1.0)
    probs = fx.problems(3)
    recs = episodes.run_episodes(params, fx.CFG, fx.CHAT, probs, [0, 1, 2], cfg, seed=3)
    assert [r["sample"] for r in recs] == [0, 1, 2]
    for r in recs:
        tokens, turn = supervision.trajectory_tokens(
            r["prompt_ids"], [t["response_ids"] for t in r["turns"]], [t["feedback_ids"] for t in r["turns"]],
            fx.CHAT.end_of_turn_id,
        )
        logp = jax.nn.log_softmax(model.logits(params, fx.CFG, tokens[None])[0], -1)
        scored = np.asarray(logp)[np.arange(len(tokens) - 1), tokens[1:]]
        for t_idx, t in enumerate(r["turns"], start=1):
            idx = np.flatnonzero(turn == t_idx)[: len(t["response_ids"])]
            np.testing.assert_allclose(scored[idx - 1], t["logprobs"], atol=2e-4)
        # The layout by hand: prompt, then per turn its response (closed by an end of turn if it was cut at
        # max_new_tokens) and the feedback that followed it.
        eot, want = fx.CHAT.end_of_turn_id, list(r["prompt_ids"])
        for t in r["turns"]:
            assert 1 <= len(t["response_ids"]) <= cfg.max_new_tokens
            want += t["response_ids"] + ([] if t["response_ids"][-1] == eot else [eot]) + t["feedback_ids"]
        assert tokens.tolist() == want
        # An episode stops only at a correct answer or at max_turns: this one was never correct.
        assert [t["reward"] for t in r["turns"]] == [0.0, 0.0, 0.0]
        assert all(t["feedback_ids"] == fx.CHAT.feedback_ids(cfg.feedback) for t in r["turns"][:-1])
        assert r["turns"][-1]["feedback_ids"] == [] and r["solved_turn"] == 0


def test_keys_depend_only_on_problem_sample_turn():
    k1 = episodes.trajectory_keys(0, ["aa11", "bb22"], [0, 5], 2)
    k2 = episodes.trajectory_keys(0, ["bb22"], [5], 2)
    assert np.array_equal(jax.random.key_data(k1[1]), jax.random.key_data(k2[0]))
    k3 = episodes.trajectory_keys(0, ["bb22"], [5], 3)
    k4 = episodes.trajectory_keys(1, ["bb22"], [5], 2)
    assert not np.array_equal(jax.random.key_data(k2[0]), jax.random.key_data(k3[0]))
    assert not np.array_equal(jax.random.key_data(k2[0]), jax.random.key_data(k4[0]))


def test_greedy_is_deterministic_and_padding_rows_inert():
    params = fx.params(2)
    cfg = episodes.EpisodeConfig(max_turns=2, max_new_tokens=4)
    probs = fx.problems(2)
    a = episodes.run_episodes(params, fx.CFG, fx.CHAT, probs, [0, 0], cfg)
    b = episodes.run_episodes(params, fx.CFG, fx.CHAT, probs[:1], [0], cfg, pad_rows_to=8)
    assert [t["response_ids"] for t in a[0]["turns"]] == [t["response_ids"] for t in b[0]["turns"]]
    assert episodes.run_episodes(params, fx.CFG, fx.CHAT, [], [], cfg) == []
