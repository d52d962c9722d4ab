"""multi@k evaluation: greedy multi-turn episodes with the rollouts' template and feedback, on held-out problems.

Library: `evaluate(params, model_config, chat, problems, episode_config)`. Command line, on any HF
policy directory (model + tokenizer) and task:
    python -m drift_jax.evaluate --policy=DIR --task=synthetic --num_problems=400 --max_turns=5
    python -m drift_jax.evaluate --policy=/ckpt/Qwen2.5-3B-Instruct --task=math500 \
        --manual_dir=/data/math500 --data_dir=/data/tfds --max_new_tokens=512 --mesh=data=-1,tensor=1
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from drift_jax import episodes, report
from drift_jax.envs import ChatFormat, Problem
from drift_jax.model import ModelConfig, Params


def evaluate(
    params: Params,
    model_config: ModelConfig,
    chat: ChatFormat,
    problems: Sequence[Problem],
    episode: episodes.EpisodeConfig,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rows_per_batch: int = 256,
) -> dict[str, Any]:
    """multi@1..T, per-turn correction rates, and each problem's first correct turn (0: never)."""
    if episode.temperature > 0:
        raise ValueError("evaluation decodes greedily: temperature must be 0")
    solved: list[int] = []
    format_ok: list[bool] = []
    start = time.time()
    for i in tqdm.trange(0, len(problems), rows_per_batch, desc="eval", unit="batch"):
        batch = problems[i : i + rows_per_batch]
        records = episodes.run_episodes(params, model_config, chat, batch, [0] * len(batch), episode, mesh=mesh,
                                        pad_rows_to=rows_per_batch)
        solved += [r["solved_turn"] for r in records]
        format_ok += [t["format_ok"] for r in records for t in r["turns"]]
    return {
        **report.multi_at_k(solved, episode.max_turns),
        "correction_rates": report.correction_rates(solved, episode.max_turns),
        "num_problems": len(problems),
        "format_ok_rate": float(np.mean(format_ok)),
        "problem_ids": [p.id for p in problems],
        "solved_turns": solved,
        "seconds": time.time() - start,
    }


def _mesh_arg(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}


def main(argv: Sequence[str] | None = None) -> None:
    from drift_jax import envs, hf, sharding

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="HF directory with the model and its tokenizer")
    p.add_argument("--task", default="synthetic", help="synthetic or a local format (math500, gsm8k, gpqa, ...)")
    p.add_argument("--split", default="test")
    p.add_argument("--num_problems", type=int, default=0, help="0: all")
    p.add_argument("--data_dir", default="/tmp/drift_jax_tfds")
    p.add_argument("--manual_dir", default=None)
    p.add_argument("--max_turns", type=int, default=5)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--feedback", default=envs.DEFAULT_FEEDBACK)
    p.add_argument("--rows_per_batch", type=int, default=256)
    p.add_argument("--dtype", default=None)
    p.add_argument("--mesh", type=_mesh_arg, default={"data": -1})
    p.add_argument("--out", default=None, help="write the full result as JSON here")
    args = p.parse_args(argv)
    mesh = sharding.make_mesh(args.mesh)
    model_config, params = hf.load_hf(args.policy, mesh=mesh, dtype=args.dtype)
    chat = ChatFormat.from_pretrained(args.policy)
    if args.task == "synthetic":
        problems = envs.synthetic.make_problems(args.split, args.num_problems or 500)
    else:
        problems = envs.load_problems(args.task, args.split, args.data_dir, manual_dir=args.manual_dir)
        problems = problems[: args.num_problems] if args.num_problems else problems
    episode = episodes.EpisodeConfig(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens, feedback=args.feedback)
    result = evaluate(params, model_config, chat, problems, episode, mesh=mesh, rows_per_batch=args.rows_per_batch)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("multi@") or k == "num_problems"}))


if __name__ == "__main__":
    main()
