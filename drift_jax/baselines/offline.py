"""The offline baselines' data: the same rollouts re-weighted (SFT-5turn, RFT), or gold single-turn chats (SFT).

They share DRIFT's reference, rollouts, example builder and trainer (`pipeline.py`), so they differ
from DRIFT only in what they fit:
  sft_rollouts  every trajectory with weight 1 (the paper's SFT-5turn: multi-turn SFT on the rollouts);
  rft           the solved trajectories only, weight 1 each (rejection-sampling fine-tuning);
  sft           single-turn chats answering the rollout problems with their gold answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from drift_jax.envs import Problem, first_messages

ROLLOUT_BASELINES = ("sft_rollouts", "rft")


def rollout_weights(name: str, success_N: np.ndarray) -> np.ndarray:
    """Per-trajectory weights of a baseline trained on the reference rollouts."""
    success_N = np.asarray(success_N, bool)
    if name == "sft_rollouts":
        return np.ones(success_N.shape, np.float64)
    if name == "rft":
        return success_N.astype(np.float64)
    raise ValueError(f"not a rollout baseline: {name!r} (one of {ROLLOUT_BASELINES})")


def gold_chats(problems: Sequence[Problem]) -> list[list[dict[str, str]]]:
    """Single-turn demonstrations: each problem's first messages, answered with its gold answer in tags."""
    return [first_messages(p) + [{"role": "assistant", "content": f"<answer>{p.answer}</answer>"}] for p in problems]
