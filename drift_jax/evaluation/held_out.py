"""multi@k evaluation: greedy multi-turn episodes with the rollouts' template and feedback, on held-out problems.

`evaluate(params, model_config, chat, problems, episode_config)`; its command line is
`python -m drift_jax.evaluate` (drift_jax/evaluate.py). Multi-host: every process calls it; each host
plays its share of the problems on its own devices and the records are gathered, so every process
returns the same result.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from drift_jax.envs import ChatFormat, Problem
from drift_jax.evaluation import report
from drift_jax.lm.model import ModelConfig, Params
from drift_jax.rollout import engine as engine_lib
from drift_jax.rollout import episodes
from drift_jax.runtime import hosts


def evaluate(
    params: Params,
    model_config: ModelConfig,
    chat: ChatFormat,
    problems: Sequence[Problem],
    episode: episodes.EpisodeConfig,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rows_per_batch: int = 256,
    engine: engine_lib.EngineConfig = engine_lib.EngineConfig(),
) -> dict[str, Any]:
    """multi@1..T, per-turn correction rates, and each problem's first correct turn (0: never).
    All problems stream through one run of the rollout engine with `rows_per_batch` rows (per host)."""
    if episode.temperature > 0:
        raise ValueError("evaluation decodes greedily: temperature must be 0")
    start = time.time()
    mine = [problems[i] for i in hosts.my_range(len(problems))]
    bar = tqdm.tqdm(total=len(mine), desc="eval", unit="problem", disable=not hosts.is_writer())
    local = None if mesh is None else hosts.local_mesh(mesh)
    records = episodes.run_episodes(
        hosts.localize(params, local), model_config, chat, mine, [0] * len(mine), episode, mesh=local,
        engine=dataclasses.replace(engine, rows=rows_per_batch), on_record=lambda i, r: bar.update(1),
    )
    bar.close()
    records = hosts.allgather_objects(records)
    solved = [r["solved_turn"] for r in records]
    format_ok = [t["format_ok"] for r in records for t in r["turns"]]
    return {
        **report.multi_at_k(solved, episode.max_turns),
        "correction_rates": report.correction_rates(solved, episode.max_turns),
        "num_problems": len(problems),
        "format_ok_rate": float(np.mean(format_ok)),
        "problem_ids": [p.id for p in problems],
        "solved_turns": solved,
        "seconds": time.time() - start,
    }
