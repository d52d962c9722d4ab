"""Command line for held-out multi@k of any HF policy directory (model + tokenizer) on a task.

    python -m drift_jax.evaluate --policy=runs/quickstart/drift/hf          # the run's own task and eval split
    python -m drift_jax.evaluate --policy=runs/quickstart/drift/hf --split=dev --num_problems=200
    python -m drift_jax.evaluate --policy=DIR --task=synthetic --task_knobs='{"num_operands": 4, "ops": ["max"]}'
    python -m drift_jax.evaluate --policy=/ckpt/Qwen2.5-3B-Instruct --task=math500 \
        --manual_dir=/data/math500 --data_dir=/data/tfds --max_new_tokens=512 --mesh=data=-1,tensor=1

A policy written by the pipeline (`WORKDIR/<method>/hf`, or `--run=WORKDIR`) is evaluated on its run's
task, knobs, seed, eval split and episode settings (the newest config in `WORKDIR/run_configs/`), so the
problems are exactly the pipeline's eval_<method>.json's; flags given explicitly override them. Without a
run, the synthetic task takes `--task_knobs` (default: synthetic.make_problems' own, `a+b mod 5`).
Prints one JSON line (multi@k, num_problems); `--out` writes the full result. The library call is
`drift_jax.evaluation.held_out.evaluate`.
"""

import glob
import json
import logging
import os
import sys
from typing import Any

import ml_collections
from absl import app, flags

from drift_jax import envs, stage_io, validate
from drift_jax.evaluation import held_out
from drift_jax.lm import hf, sharding
from drift_jax.rollout import episodes

_POLICY = flags.DEFINE_string("policy", None, "HF directory with the model and its tokenizer", required=True)
_RUN = flags.DEFINE_string("run", None, "the pipeline workdir whose task and settings to use (default: found "
                           "above --policy, e.g. WORKDIR for WORKDIR/drift/hf)")
_TASK = flags.DEFINE_string("task", "synthetic", "synthetic or a local format (math500, gsm8k, gpqa, ...)")
_TASK_KNOBS = flags.DEFINE_string("task_knobs", None, "synthetic task knobs as JSON, e.g. "
                                  '\'{"num_operands": 4, "max_digits": 2, "modulus": 0, "ops": ["max"]}\' (modulus 0: none)')
_SEED = flags.DEFINE_integer("seed", 0, "seed of the synthetic problems (a run's: its config's seed)")
_SPLIT = flags.DEFINE_string("split", "test", "split of the task: train, dev or test")
_NUM_PROBLEMS = flags.DEFINE_integer("num_problems", 0, "0: all (synthetic: 500)")
_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/drift_jax_tfds", "TFDS data dir of file-based tasks")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "where the task's local files are")
_MAX_TURNS = flags.DEFINE_integer("max_turns", 5, "turns per episode (multi@1..max_turns)")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 512, "tokens per answer")
_FEEDBACK = flags.DEFINE_string("feedback", envs.DEFAULT_FEEDBACK, "the user message after a wrong answer")
_ROWS = flags.DEFINE_integer("rows_per_batch", 256, "episodes decoded together")
_DTYPE = flags.DEFINE_string("dtype", None, "parameter dtype (default: the checkpoint's)")
_MESH = flags.DEFINE_string("mesh", "data=-1", "mesh axes, e.g. data=-1,tensor=2")
_OUT = flags.DEFINE_string("out", None, "write the full result as JSON here")

log = logging.getLogger(__name__)


def find_run(policy: str) -> str | None:
    """The pipeline workdir a policy directory belongs to: the policy dir or one of its two parents that
    holds run_configs/ (WORKDIR/drift/hf, WORKDIR/reference/hf)."""
    path = os.path.abspath(policy)
    for _ in range(3):
        if glob.glob(os.path.join(path, "run_configs", "*.json")):
            return path
        path = os.path.dirname(path)
    return None


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The newest config `pipeline.run` kept in `<workdir>/run_configs/` (named by UTC time)."""
    found = sorted(glob.glob(os.path.join(workdir, "run_configs", "*.json")))
    if not found:
        raise FileNotFoundError(f"{workdir}/run_configs/*.json: no run config (is {workdir} a pipeline workdir?)")
    with open(found[-1]) as f:
        return ml_collections.ConfigDict(json.load(f))


def eval_config(run: ml_collections.ConfigDict | None, given: dict[str, Any]) -> ml_collections.ConfigDict:
    """The sections of a pipeline config that `stage_io.eval_problems` and the episode read: the run's,
    with the values in `given` (flags set on the command line) over them; without a run, from `given`."""
    if run is None:
        knobs = given.get("task_knobs")
        cfg = ml_collections.ConfigDict({
            "seed": given.get("seed", 0), "max_turns": given["max_turns"], "max_new_tokens": given["max_new_tokens"],
            "feedback": given["feedback"],
            "task": {"name": given["task"], "data_dir": given["data_dir"], "manual_dir": given.get("manual_dir") or "",
                     "knobs": _knobs(given["task"], knobs)},
            "eval": {"task": {"name": ""}, "split": given["split"], "num_problems": given["num_problems"]},
        })
    else:
        cfg = ml_collections.ConfigDict(run.to_dict())
        for key in ("seed", "max_turns", "max_new_tokens", "feedback"):
            if key in given:
                cfg[key] = given[key]
        for key in ("split", "num_problems"):
            if key in given:
                cfg.eval[key] = given[key]
        section = cfg.eval.task if cfg.eval.task.get("name") else cfg.task
        name = given.get("task", section.name)
        if name != section.name or any(k in given for k in ("task_knobs", "data_dir", "manual_dir")):
            same = name == section.name  # the run's task with other knobs or files, or another task
            cfg.eval.task = ml_collections.ConfigDict({
                "name": name, "data_dir": given.get("data_dir", section.get("data_dir", "") if same else ""),
                "manual_dir": given.get("manual_dir", section.get("manual_dir", "") if same else "") or "",
                "knobs": _knobs(name, given.get("task_knobs", _plain(section.get("knobs")) if same else None)),
            })
    if not cfg.eval.num_problems and (cfg.eval.task.get("name") or cfg.task.name) == "synthetic":
        cfg.eval.num_problems = 500
    return cfg


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _knobs(task: str, knobs: dict[str, Any] | None) -> dict[str, Any]:
    """Synthetic knobs as given, else synthetic.make_problems' defaults (a+b mod 5; modulus 0 would mean none)."""
    if task != "synthetic":
        return {}
    return {"modulus": 5} if knobs is None else dict(knobs)


def _given() -> dict[str, Any]:
    """The flags set on the command line (the rest take the run's values, or their defaults without a run)."""
    names = ("task", "seed", "split", "num_problems", "data_dir", "manual_dir", "max_turns", "max_new_tokens",
             "feedback", "dtype")
    given = {n: flags.FLAGS[n].value for n in names if flags.FLAGS[n].present}
    if _TASK_KNOBS.value is not None:
        given["task_knobs"] = json.loads(_TASK_KNOBS.value)
    return given


def main(argv) -> None:
    del argv
    try:
        shape = {k: int(v) for k, v in (kv.split("=") for kv in _MESH.value.split(",") if kv)}
    except ValueError:
        sys.exit(f"error: --mesh={_MESH.value!r}: expected axis=size pairs, e.g. data=-1,tensor=2")
    try:
        given = _given()
    except json.JSONDecodeError as e:
        sys.exit(f"error: --task_knobs={_TASK_KNOBS.value!r}: not JSON ({e})")
    workdir = _RUN.value or find_run(_POLICY.value)
    run = run_config(workdir) if workdir else None
    if run is None:
        given.update({n: flags.FLAGS[n].value for n in ("task", "split", "num_problems", "data_dir", "manual_dir",
                                                        "max_turns", "max_new_tokens", "feedback") if n not in given})
        if given["task"] == "synthetic" and "task_knobs" not in given:
            log.warning("no run found above --policy and no --task_knobs: the synthetic task's defaults (a+b mod 5)")
    cfg = eval_config(run, given)
    dtype = given.get("dtype") or (run.model.get("param_dtype") if run is not None else None) or None
    task = cfg.eval.task if cfg.eval.task.get("name") else cfg.task
    try:  # every problem with the inputs at once, before any weight is read
        validate.check_evaluate(policy=_POLICY.value, task=task.name, split=cfg.eval.split,
                                num_problems=cfg.eval.num_problems, manual_dir=task.get("manual_dir") or None,
                                max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                                feedback=cfg.feedback, rows_per_batch=_ROWS.value, dtype=dtype, mesh=shape,
                                knobs=_plain(task.get("knobs")) or {}, seed=cfg.seed)
        problems = stage_io.eval_problems(cfg)
    except validate.ConfigError as e:
        sys.exit(f"error: {e}")
    except (ValueError, TypeError) as e:  # knobs the synthetic task does not take
        sys.exit(f"error: task {task.name} with knobs {task.get('knobs')}: {e}")
    mesh = sharding.make_mesh(shape)
    model_config, params = hf.load_hf(_POLICY.value, mesh=mesh, dtype=dtype)
    chat = envs.ChatFormat.from_pretrained(_POLICY.value)
    episode = episodes.EpisodeConfig(max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                                     feedback=cfg.feedback)
    result = held_out.evaluate(params, model_config, chat, problems, episode, mesh=mesh, rows_per_batch=_ROWS.value)
    result["task"] = {"name": task.name, "knobs": _plain(task.get("knobs")) or {}, "split": cfg.eval.split,
                      "seed": cfg.seed, "run": workdir}
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("multi@") or k == "num_problems"}))


if __name__ == "__main__":
    app.run(main)
