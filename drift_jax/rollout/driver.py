"""Rollout driver: N problems x K samples from the fixed reference policy, written as resumable shards.

Problems are cut into shards of `problems_per_shard` (all K samples of a problem in one shard). Shard s
is written by process s % num_processes to `rollouts-SSSSS.arrayrecord`, whole or not at all (a local
temporary file renamed, or one upload to an object store: `runtime.files`), so a re-run skips finished shards and redoes a half-written one with
identical content: a trajectory's randomness depends only on (seed, problem id, sample, turn). Beside each
shard a hidden `.rollouts-SSSSS.seconds` holds the stage's seconds when it was written, so a resumed stage
reports the cost of all its shards (runtime/clock.py).
Each record is one trajectory (`episodes.run_episodes`); its return is computed where it is used
(`returns.record_return`), so a change of the return coefficients reuses the rollouts. All of a
process's missing shards stream through one run of the rollout engine (rows refilled across shard
boundaries); a shard is written as soon as its last trajectory ends. Each process runs the engine on
its own devices (`mesh` is process-local), so processes with unequal shard counts never wait on each
other; the caller puts a barrier before anything reads the shards.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import msgpack
import tqdm

from drift_jax.envs import ChatFormat, Problem
from drift_jax.lm.model import ModelConfig, Params
from drift_jax.rollout import engine as engine_lib
from drift_jax.rollout import episodes
from drift_jax.runtime import clock, files

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    num_samples: int = 16  # K trajectories per problem
    episode: episodes.EpisodeConfig = episodes.EpisodeConfig(temperature=1.0)
    problems_per_shard: int = 64
    rows_per_batch: int = 256  # trajectories in flight together (the engine's rows)
    seed: int = 0
    engine: engine_lib.EngineConfig = engine_lib.EngineConfig()  # its `rows` is rows_per_batch


def shard_path(out_dir: str, shard: int) -> str:
    return files.join(out_dir, f"rollouts-{shard:05d}.arrayrecord")


def seconds_path(out_dir: str, shard: int) -> str:
    """The stage's seconds when the shard was written (hidden: not a rollout, not in the outputs' digest)."""
    return files.join(out_dir, f".rollouts-{shard:05d}.seconds")


def _write_shard(path: str, records: list[dict[str, Any]]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    with files.local_output(path) as local:  # a shard exists whole or not at all
        writer = ArrayRecordWriter(local, "group_size:1")
        for r in records:
            writer.write(msgpack.packb(r))
        writer.close()


def read_rollouts(out_dir: str) -> list[dict[str, Any]]:
    """All trajectories of finished shards, in shard order."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    if not files.exists(out_dir):
        return []
    paths = sorted(os.fspath(p) for p in files.path(out_dir).glob("rollouts-*.arrayrecord"))
    if not paths:
        return []
    source = ArrayRecordDataSource([files.local_input(p) for p in paths])
    return [msgpack.unpackb(source[i]) for i in range(len(source))]


def rollout(
    params: Params,
    model_config: ModelConfig,
    chat: ChatFormat,
    problems: Sequence[Problem],
    config: RolloutConfig,
    out_dir: str,
    *,
    mesh: jax.sharding.Mesh | None = None,
    process_index: int | None = None,
    num_processes: int | None = None,
) -> dict[str, float]:
    """Writes this process's missing shards; returns counts and rates for the log."""
    process_index = jax.process_index() if process_index is None else process_index
    num_processes = jax.process_count() if num_processes is None else num_processes
    files.makedirs(out_dir)
    num_shards = -(-len(problems) // config.problems_per_shard)
    mine = [s for s in range(num_shards) if s % num_processes == process_index]
    todo = [s for s in mine if not files.exists(shard_path(out_dir, s))]
    work = clock.current()
    if len(todo) < len(mine):
        log.info("rollouts: %d of %d shards already written, skipping them", len(mine) - len(todo), len(mine))
        for s in set(mine) - set(todo):  # the written shards' seconds: what the attempts that wrote them spent
            if files.exists(seconds_path(out_dir, s)):
                work.resumed(float(files.read_text(seconds_path(out_dir, s))))
    k = config.num_samples
    total = sum(len(problems[s * config.problems_per_shard : (s + 1) * config.problems_per_shard]) for s in todo) * k
    stats = {"trajectories": 0, "solved": 0, "tokens": 0}
    start = time.time()
    bar = tqdm.tqdm(total=total, desc="rollouts", unit="traj", disable=total == 0)
    rows = [(s, p, i) for s in todo for p in problems[s * config.problems_per_shard : (s + 1) * config.problems_per_shard]
            for i in range(k)]
    left = collections.Counter(s for s, _, _ in rows)
    done: dict[int, dict[str, Any]] = {}

    def on_record(n: int, record: dict[str, Any]) -> None:
        done[n] = record
        stats["trajectories"] += 1
        stats["solved"] += record["solved_turn"] > 0
        stats["tokens"] += sum(len(t["response_ids"]) for t in record["turns"])
        bar.update(1)
        bar.set_postfix(success=f"{stats['solved'] / stats['trajectories']:.3f}",
                        traj_per_s=f"{stats['trajectories'] / (time.time() - start):.1f}")
        shard = rows[n][0]
        left[shard] -= 1
        if not left[shard]:  # its last trajectory: write the shard, in row order, whole or not at all
            mine_rows = [m for m, r in enumerate(rows) if r[0] == shard]
            _write_shard(shard_path(out_dir, shard), [done.pop(m) for m in mine_rows])
            files.write_text(seconds_path(out_dir, shard), f"{work.elapsed():.3f}")

    engine = dataclasses.replace(config.engine, rows=config.rows_per_batch)
    episodes.run_episodes(
        params, model_config, chat, [p for _, p, _ in rows], [i for _, _, i in rows], config.episode,
        seed=config.seed, mesh=mesh, engine=engine, on_record=on_record,
    )
    bar.close()
    stats["seconds"] = work.elapsed()  # with the seconds of earlier attempts that wrote shards this one skipped
    return stats
