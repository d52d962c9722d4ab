"""Per-trajectory DRIFT returns: discounted first-success reward, format penalty, repeat penalty.

R = gamma^(t*-1) [if solved at turn t*]  +  format_penalty * #unparseable turns
    -  repeat_penalty * (1 - #distinct answers / #answers)

Unparseable answers (None) are left out of the repeat term entirely, in both the distinct count and
#answers: an unparseable turn is already charged by the format term, and counting it as a "repeat"
would charge it twice. A trajectory with no parseable answer has repeat penalty 0.

All terms are computed over the turns given. Episodes stop at the first correct turn, so normally
nothing follows it; if a caller passes later turns anyway, only the first correct one is rewarded
(r_t = 1 only there) and the later turns still count for the two penalties.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from drift_jax.envs import normalize_answer


@dataclasses.dataclass(frozen=True)
class ReturnConfig:
    """Return coefficients; a coefficient of 0 switches its term off."""

    gamma: float = 0.9
    format_penalty: float = -0.1  # added once per turn with no parseable answer (so <= 0)
    repeat_penalty: float = 0.5  # subtracted, times the fraction of repeated answers


def trajectory_return(
    rewards_T: Sequence[float],
    answers_T: Sequence[str | None],
    format_ok_T: Sequence[bool] | None = None,
    config: ReturnConfig = ReturnConfig(),
) -> float:
    """Return of one trajectory of T turns. `format_ok_T` defaults to `answer is not None`."""
    rewards_T = np.asarray(rewards_T, dtype=np.float64).reshape(-1)
    if len(answers_T) != rewards_T.shape[0]:
        raise ValueError(f"{rewards_T.shape[0]} rewards but {len(answers_T)} answers")
    if format_ok_T is None:
        format_ok_T = [a is not None for a in answers_T]
    format_ok_T = np.asarray(format_ok_T, dtype=bool).reshape(-1)

    correct_T = np.flatnonzero(rewards_T > 0)
    task = config.gamma ** correct_T[0] if correct_T.size else 0.0
    fmt = config.format_penalty * np.count_nonzero(~format_ok_T)
    parsed = [a for a in answers_T if a is not None]
    repeat = 0.0
    if parsed:
        repeat = config.repeat_penalty * (1.0 - len(set(parsed)) / len(parsed))
    return float(task + fmt - repeat)


def record_return(record: dict[str, Any], config: ReturnConfig = ReturnConfig()) -> float:
    """Return of a recorded trajectory (`episodes.run_episodes`), recomputed from its turns, so a sweep
    over gamma or the penalties reuses the rollouts. Answers are compared after `normalize_answer`
    (`1/2` repeats `0.5`)."""
    turns = record["turns"]
    return trajectory_return([t["reward"] for t in turns], [normalize_answer(t["answer"]) for t in turns],
                             [t["format_ok"] for t in turns], config)
