"""Tests for drift_jax.evaluation.held_out: multi@k of a policy whose answers are known."""

import jax
import numpy as np
import pytest
import rollout_fixture as fx

from drift_jax import envs
from drift_jax.evaluation import held_out
from drift_jax.rollout import episodes


def _always_answers(text: str):
    """Params of a policy whose greedy reply to any prompt is `text` and an end of turn: attention and MLP
    outputs are zero, so each position's logits depend on its own token only (a bigram chain from the
    generation prompt's last token through the reply's tokens)."""
    chain = [fx.CHAT.prompt_ids([{"role": "user", "content": "q"}])[-1], *fx.CHAT.encode(text), fx.CHAT.end_of_turn_id]
    assert len(set(chain)) == len(chain) <= fx.CFG.hidden_size  # one embedding direction per chain token
    p = jax.tree.map(np.zeros_like, jax.device_get(fx.params(0)))
    p["final_norm"]["scale"][:] = 1.0
    for i, (token, following) in enumerate(zip(chain, chain[1:])):
        p["embedding"][token, i] = 1.0
        p["lm_head"][i, following] = 10.0
    return p


def test_multi_at_k_of_a_policy_with_known_answers():
    """A policy that answers 85 at every turn solves exactly the problems whose answer is 85, at turn 1:
    multi@k, correction rates and format rate by hand."""
    pool = envs.synthetic.make_problems("test", 400, seed=0, num_operands=2, modulus=None, ops=("max",))
    right = [q for q in pool if q.answer == "85"][:3]
    wrong = [q for q in pool if q.answer != "85"][:5]
    assert len(right) == 3
    probs = [wrong[0], right[0], wrong[1], wrong[2], right[1], wrong[3], right[2], wrong[4]]
    params = _always_answers("<answer>85</answer>")
    ep = episodes.EpisodeConfig(max_turns=3, max_new_tokens=8)
    a = held_out.evaluate(params, fx.CFG, fx.CHAT, probs, ep, rows_per_batch=4)
    assert a["solved_turns"] == [0, 1, 0, 0, 1, 0, 1, 0] and a["num_problems"] == 8
    assert [a[f"multi@{k}"] for k in (1, 2, 3)] == [3 / 8] * 3
    assert a["correction_rates"] == {"turn1": 3 / 8, "turn2": 0.0, "turn3": 0.0}
    assert a["format_ok_rate"] == 1.0  # every turn, the 5 unsolved problems' 3 turns included, parsed
    assert held_out.evaluate(params, fx.CFG, fx.CHAT, probs, ep, rows_per_batch=8)["solved_turns"] == a["solved_turns"]
    recs = episodes.run_episodes(params, fx.CFG, fx.CHAT, probs, [0] * 8, ep)
    assert {fx.CHAT.decode(t["response_ids"]) for r in recs for t in r["turns"]} == {"<answer>85</answer>"}
    assert [len(r["turns"]) for r in recs] == [3, 1, 3, 3, 1, 3, 1, 3]
    with pytest.raises(ValueError, match="greedily"):
        held_out.evaluate(params, fx.CFG, fx.CHAT, probs, episodes.EpisodeConfig(temperature=1.0))
