"""Tests for drift_jax.returns: DRIFT.md examples, each term, vectorised == per-trajectory."""
import numpy as np
import pytest

from drift_jax.returns import ReturnConfig, batch_returns, trajectory_return

NO_PENALTY = ReturnConfig(format_penalty=0.0, repeat_penalty=0.0)


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
    # The returns of DRIFT.md's worked example come out of these trajectories (gamma 0.9).
    assert trajectory_return([1], ["x"]) == pytest.approx(1.0)
    assert trajectory_return([0, 1], ["y", "x"]) == pytest.approx(0.9)
    assert trajectory_return([0, 0, 0, 0, 1], list("abcdx")) == pytest.approx(0.6561)
    assert trajectory_return([0] * 5, ["a", "b", None, None, None]) == pytest.approx(-0.3)


def test_vectorised_equals_per_trajectory():
    rng = np.random.default_rng(0)
    N, T = 200, 5
    lengths_N = rng.integers(1, T + 1, size=N)
    rewards, answers, flags = [], [], []
    for n in range(N):
        L = lengths_N[n]
        solved = rng.random() < 0.5
        r = [0] * L
        if solved:
            r[L - 1] = 1  # episodes stop at the first correct turn
        a = [None if rng.random() < 0.2 else str(rng.integers(0, 3)) for _ in range(L)]
        f = [x is not None for x in a]
        if rng.random() < 0.1:
            f[0] = not f[0]  # flags that disagree with the parse must still match row by row
        rewards.append(r), answers.append(a), flags.append(f)
    mask = np.arange(T)[None, :] < lengths_N[:, None]
    pad = lambda rows, fill: [row + [fill] * (T - len(row)) for row in rows]  # noqa: E731
    configs = [ReturnConfig(), ReturnConfig(gamma=0.3, format_penalty=-0.2, repeat_penalty=1.0),
               NO_PENALTY]
    for cfg in configs:
        want = np.array([trajectory_return(r, a, f, cfg)
                         for r, a, f in zip(rewards, answers, flags)])
        got = batch_returns(np.array(pad(rewards, 0)), pad(answers, None), mask,
                            np.array(pad(flags, True)), cfg)
        np.testing.assert_allclose(got, want, atol=1e-12)
        # Default flags (answer is not None), padding that holds garbage, and integer answer ids.
        want = np.array([trajectory_return(r, a, config=cfg) for r, a in zip(rewards, answers)])
        got = batch_returns(np.array(pad(rewards, 1)), pad(answers, "junk"), mask, config=cfg)
        np.testing.assert_allclose(got, want, atol=1e-12)
        ids = np.array([[-1 if x is None else int(x) for x in row] for row in pad(answers, None)])
        got = batch_returns(np.array(pad(rewards, 0)), ids, mask, config=cfg)
        np.testing.assert_allclose(got, want, atol=1e-12)
