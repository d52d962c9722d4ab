"""Weighted SFT examples: masks cover exactly the assistant tokens the supervision mode asks for."""

import numpy as np
import pytest

from drift_jax.rollout import supervision

EOT = 99


def _traj():
    return {
        "problem_id": "abc",
        "sample": 3,
        "prompt_ids": [1, 2, 3],
        "turns": [
            {"response_ids": [10, 11, EOT], "feedback_ids": [50, 51]},
            {"response_ids": [12], "feedback_ids": [52, 53, 54]},  # truncated: no end of turn
            {"response_ids": [13, 14, EOT], "feedback_ids": []},
        ],
    }


def test_tokens_follow_the_cache_layout():
    tr = _traj()
    tokens, turn = supervision.trajectory_tokens(
        tr["prompt_ids"], [t["response_ids"] for t in tr["turns"]], [t["feedback_ids"] for t in tr["turns"]], EOT
    )
    assert tokens.tolist() == [1, 2, 3, 10, 11, EOT, 50, 51, 12, EOT, 52, 53, 54, 13, 14, EOT]
    assert turn.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 2, 2, 0, 0, 0, 3, 3, 3]


@pytest.mark.parametrize(
    "mode,scored",
    [("terminal", [13, 14, EOT]), ("all", [10, 11, EOT, 12, EOT, 13, 14, EOT])],
)
def test_mask_covers_exactly_assistant_tokens(mode, scored):
    ex = supervision.make_example(_traj(), 2.5, end_of_turn=EOT, supervision=mode)
    assert ex["tokens"][ex["loss_mask"] == 1].tolist() == scored
    assert ex["weight"] == np.float32(2.5) and ex["group_id"] == "abc" and ex["example_id"] == "abc/3"
    # no prompt or feedback token is ever a target
    assert not set(ex["tokens"][ex["loss_mask"] == 1].tolist()) & {1, 2, 3, 50, 51, 52, 53, 54}


def test_single_turn_terminal_equals_all():
    tr = {"problem_id": "p", "sample": 0, "prompt_ids": [1, 2], "turns": [{"response_ids": [7, EOT], "feedback_ids": []}]}
    a = supervision.make_example(tr, 1.0, end_of_turn=EOT, supervision="terminal")
    b = supervision.make_example(tr, 1.0, end_of_turn=EOT, supervision="all")
    np.testing.assert_array_equal(a["loss_mask"], b["loss_mask"])
    assert a["loss_mask"].tolist() == [0, 0, 1, 1]


def test_max_length_keeps_the_question_and_drops_earlier_turns_whole():
    tr = _traj()  # 16 tokens: prompt 3 | turn 1 + feedback 5 | turn 2 + feedback 5 | turn 3 3
    # Turn 1 and its feedback go first (11 tokens), then turn 2 as well (6): the prompt always stays.
    ex = supervision.make_example(tr, 1.0, end_of_turn=EOT, max_length=11)
    assert ex["tokens"].tolist() == [1, 2, 3, 12, EOT, 52, 53, 54, 13, 14, EOT]
    assert ex["loss_mask"].tolist() == [0] * 8 + [1, 1, 1]
    ex = supervision.make_example(tr, 1.0, end_of_turn=EOT, max_length=10)
    assert ex["tokens"].tolist() == [1, 2, 3, 13, 14, EOT] and ex["loss_mask"].tolist() == [0, 0, 0, 1, 1, 1]
    # The prompt and the scored turn alone do not fit; "all" never drops a scored turn.
    assert supervision.make_example(tr, 1.0, end_of_turn=EOT, max_length=5) is None
    assert supervision.make_example(tr, 1.0, end_of_turn=EOT, supervision="all", max_length=15) is None
    assert len(supervision.make_example(tr, 1.0, end_of_turn=EOT, supervision="all", max_length=16)["tokens"]) == 16


def test_a_turn_ended_by_another_stop_token_is_not_closed_again():
    # Llama-3: the sampler stops at <|eot_id|> (end of turn) or <|end_of_text|> (eos, here 98); a turn
    # that ended with eos is rebuilt as sampled, with no end-of-turn token the cache never held.
    tr = {"problem_id": "p", "sample": 0, "prompt_ids": [1], "turns": [
        {"response_ids": [7, 98], "feedback_ids": [50]}, {"response_ids": [8], "feedback_ids": []}]}
    ex = supervision.make_example(tr, 1.0, end_of_turn=EOT, stop_tokens=(EOT, 98), supervision="all")
    assert ex["tokens"].tolist() == [1, 7, 98, 50, 8, EOT]  # the truncated last turn is closed
    assert ex["loss_mask"].tolist() == [0, 1, 1, 0, 1, 1]
    assert supervision.make_example(tr, 1.0, end_of_turn=EOT)["tokens"].tolist() == [1, 7, 98, EOT, 50, 8, EOT]


def test_bad_supervision():
    with pytest.raises(ValueError, match="supervision"):
        supervision.make_example(_traj(), 1.0, end_of_turn=EOT, supervision="first")
