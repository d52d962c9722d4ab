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

import numpy as np


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


def answer_ids(answers_NxT: Sequence[Sequence[str | None]], mask_NxT: np.ndarray) -> np.ndarray:
    """Integer ids for answer strings (equal strings, equal ids); -1 for None or masked turns."""
    mask_NxT = np.asarray(mask_NxT, dtype=bool)
    answers_NxT = np.asarray(answers_NxT, dtype=object)
    if answers_NxT.shape != mask_NxT.shape:
        raise ValueError(f"answers {answers_NxT.shape} vs mask {mask_NxT.shape}")
    is_parsed = np.frompyfunc(lambda a: a is not None, 1, 1)
    valid_NxT = mask_NxT & is_parsed(answers_NxT).astype(bool)
    ids_NxT = np.full(mask_NxT.shape, -1, dtype=np.int64)
    if valid_NxT.any():
        _, inverse = np.unique(answers_NxT[valid_NxT].astype(str), return_inverse=True)
        ids_NxT[valid_NxT] = inverse.reshape(-1)
    return ids_NxT


def batch_returns(
    rewards_NxT: np.ndarray,
    answers_NxT: Sequence[Sequence[str | None]] | np.ndarray,
    mask_NxT: np.ndarray,
    format_ok_NxT: np.ndarray | None = None,
    config: ReturnConfig = ReturnConfig(),
) -> np.ndarray:
    """Returns of N padded trajectories; `mask_NxT` marks real turns. Equals `trajectory_return`
    row by row. `answers_NxT` holds strings/None, or integer ids with -1 for None."""
    mask_NxT = np.asarray(mask_NxT, dtype=bool)
    rewards_NxT = np.asarray(rewards_NxT, dtype=np.float64)
    if np.issubdtype(np.asarray(answers_NxT).dtype, np.integer):
        ids_NxT = np.where(mask_NxT, np.asarray(answers_NxT), -1)
    else:
        ids_NxT = answer_ids(answers_NxT, mask_NxT)
    if format_ok_NxT is None:
        format_ok_NxT = ids_NxT >= 0
    format_ok_NxT = np.asarray(format_ok_NxT, dtype=bool)
    _, T = mask_NxT.shape

    # Discounted reward at the first correct turn only.
    correct_NxT = mask_NxT & (rewards_NxT > 0)
    solved_N = correct_NxT.any(axis=1)
    first_N = np.argmax(correct_NxT, axis=1)
    task_N = np.where(solved_N, float(config.gamma) ** first_N, 0.0)

    fmt_N = config.format_penalty * np.count_nonzero(mask_NxT & ~format_ok_NxT, axis=1)

    # Distinct ids per row: sort, then count value changes among the valid (>= 0) entries.
    sorted_NxT = np.sort(ids_NxT, axis=1)
    new_NxT = np.ones_like(sorted_NxT, dtype=bool)
    if T > 1:
        new_NxT[:, 1:] = sorted_NxT[:, 1:] != sorted_NxT[:, :-1]
    distinct_N = np.count_nonzero(new_NxT & (sorted_NxT >= 0), axis=1)
    parsed_N = np.count_nonzero(ids_NxT >= 0, axis=1)
    repeat_frac_N = np.where(parsed_N > 0, 1.0 - distinct_N / np.maximum(parsed_N, 1), 0.0)
    repeat_N = config.repeat_penalty * repeat_frac_N

    return task_N + fmt_N - repeat_N
