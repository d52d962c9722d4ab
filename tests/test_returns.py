"""Tests for drift_jax.rollout.returns: the method's worked examples, each term, recorded trajectories."""
import pytest

from drift_jax.rollout.returns import ReturnConfig, record_return, trajectory_return


@pytest.mark.parametrize("turn", [1, 2, 3, 4, 5])
def test_solved_at_turn_t_gives_gamma_power(turn):
    rewards = [0] * (turn - 1) + [1]
    answers = [f"wrong{i}" for i in range(turn - 1)] + ["right"]  # distinct: no repeat penalty
    assert trajectory_return(rewards, answers) == pytest.approx(0.9 ** (turn - 1))
    assert trajectory_return(rewards, answers, config=ReturnConfig(gamma=0.3)) == pytest.approx(
        0.3 ** (turn - 1))


def test_only_first_correct_turn_is_rewarded():
    assert trajectory_return([0, 1, 1], ["a", "b", "c"]) == pytest.approx(0.9)


def test_unsolved_is_zero_without_penalties():
    assert trajectory_return([0] * 5, list("abcde")) == 0.0


def test_format_penalty_per_unparseable_turn():
    # Two unparseable turns, then solved at turn 3: 0.81 - 0.2; None is not a repeat.
    assert trajectory_return([0, 0, 1], [None, None, "x"]) == pytest.approx(0.81 - 0.2)
    # Explicit flags override the default (answer is None).
    assert trajectory_return([0, 0], ["a", "b"], format_ok_T=[False, True]) == pytest.approx(-0.1)
    assert trajectory_return([0, 0, 1], [None, None, "x"], config=ReturnConfig(
        format_penalty=0.0)) == pytest.approx(0.81)


def test_repeat_penalty():
    # 4 answers, 2 distinct: 0.5 * (1 - 2/4) = 0.25.
    assert trajectory_return([0] * 4, ["a", "a", "b", "b"]) == pytest.approx(-0.25)
    # Five identical wrong answers: 0.5 * (1 - 1/5) = 0.4.
    assert trajectory_return([0] * 5, ["7"] * 5) == pytest.approx(-0.4)
    assert trajectory_return([0] * 5, ["7"] * 5, config=ReturnConfig(repeat_penalty=0.0)) == 0.0


def test_unparseable_answers_are_ignored_in_repeat_count():
    # Parsed answers {a, a}: repeat 0.5 * (1 - 1/2) = 0.25; three format penalties.
    got = trajectory_return([0] * 5, ["a", None, "a", None, None])
    assert got == pytest.approx(-0.3 - 0.25)
    # All unparseable: only the format term.
    assert trajectory_return([0] * 5, [None] * 5) == pytest.approx(-0.5)


def test_reference_example_returns():
    # The returns of docs/method.md's worked example come out of these trajectories (gamma 0.9).
    assert trajectory_return([1], ["x"]) == pytest.approx(1.0)
    assert trajectory_return([0, 1], ["y", "x"]) == pytest.approx(0.9)
    assert trajectory_return([0, 0, 0, 0, 1], list("abcdx")) == pytest.approx(0.6561)
    assert trajectory_return([0] * 5, ["a", "b", None, None, None]) == pytest.approx(-0.3)


def test_record_return_normalises_answers_before_the_repeat_count():
    # "0.5" and "\\frac{1}{2}" are one answer given twice: repeat 0.5 * (1 - 1/2) = 0.25; one unparseable
    # turn: -0.1. Unsolved: no task term.
    turns = [{"reward": 0.0, "answer": "0.5", "format_ok": True},
             {"reward": 0.0, "answer": "\\frac{1}{2}", "format_ok": True},
             {"reward": 0.0, "answer": None, "format_ok": False}]
    assert record_return({"turns": turns}) == pytest.approx(-0.1 - 0.25)
    # Solved at the second turn with two distinct answers: gamma^1 and nothing else.
    solved = [{"reward": 0.0, "answer": "3", "format_ok": True}, {"reward": 1.0, "answer": "4", "format_ok": True}]
    assert record_return({"turns": solved}, ReturnConfig(gamma=0.5)) == pytest.approx(0.5)
