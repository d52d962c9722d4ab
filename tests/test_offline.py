"""Tests for drift_jax.baselines.offline: the baselines' weights and gold chats, checked by hand."""

import numpy as np
import pytest

from drift_jax import envs
from drift_jax.baselines import offline
from drift_jax.rollout import supervision


def test_rollout_weights():
    success = np.array([True, False, False, True])
    np.testing.assert_array_equal(offline.rollout_weights("sft_rollouts", success), [1, 1, 1, 1])
    np.testing.assert_array_equal(offline.rollout_weights("rft", success), [1, 0, 0, 1])
    with pytest.raises(ValueError, match="not a rollout baseline"):
        offline.rollout_weights("drift", success)


def test_gold_chats_score_exactly_the_gold_answer():
    problems = envs.synthetic.make_problems("train", 3, seed=0, num_operands=2, ops=("max",))
    chats = offline.gold_chats(problems)
    assert [c[-1] for c in chats] == [{"role": "assistant", "content": f"<answer>{p.answer}</answer>"}
                                      for p in problems]
    assert all(c[:-1] == envs.first_messages(p) for c, p in zip(chats, problems))
    chat = envs.ChatFormat.from_pretrained(envs.SYNTHETIC_TOKENIZER)
    examples = supervision.examples_from_messages(chat, chats, max_length=128)
    for ex, p in zip(examples, problems):
        scored = np.asarray(ex["tokens"])[np.flatnonzero(ex["loss_mask"])]
        # The scored tokens are the answer and the end-of-turn token, nothing of the prompt.
        assert chat.decode(scored[:-1].tolist()) == f"<answer>{p.answer}</answer>"
        assert scored[-1] == chat.end_of_turn_id and ex["weight"] == 1.0
