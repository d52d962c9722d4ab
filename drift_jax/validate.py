"""Checks a run's whole config before any stage runs and lists every problem at once, one line each.

`check(cfg)` raises one ConfigError (pipeline.run calls it first); `problems(cfg, devices=N)` gives the list
(preflight); `check_evaluate(...)` checks `python -m drift_jax.evaluate`'s inputs. Checked: methods, tasks,
beta and the other weighting, return and sampling values; the mesh against the devices and each trainer
batch against data x fsdp; the files that must exist (model, tokenizer, a chat template with a generation
prompt, task files, which are parsed: `input_files.py`); the longest possible episode against the model's
positions and the trainers' seq_len. It tokenises the prompts the run will use but never loads weights.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from jax.sharding import AbstractMesh

from drift_jax import envs
from drift_jax.input_files import chat_problems, longest_prompt, policy_problems, task_problems
from drift_jax.lm import sharding
from drift_jax.lm.sharding import MESH_AXES
from drift_jax.train import update

log = logging.getLogger(__name__)

METHODS = ("reference", "drift", "sft_rollouts", "rft", "sft", "online_rl")
ROLLOUT_METHODS = ("drift", "sft_rollouts", "rft")  # the methods trained on the reference's rollouts
SCRATCH_MAX_POSITIONS = 1024  # max_position_embeddings of a reference trained from scratch
DTYPES = ("", "float32", "bfloat16")


class ConfigError(ValueError):
    """Every problem found in a config, one per line."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) with the config (nothing was run):\n"
                         + "\n".join(f"  - {p}" for p in self.problems))


_MISSING = object()


def _get(cfg: Any, dotted: str, default: Any = _MISSING) -> Any:
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return default
    return node


class _Problems(list):
    """A list of problem lines with helpers that read a config value and check it."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg

    def value(self, key: str) -> Any:
        v = _get(self.cfg, key)
        if v is _MISSING:
            self.append(f"{key}: missing from the config")
            return None
        return v

    def number(self, key: str, ok, what: str) -> float | None:
        v = self.value(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            self.append(f"{key}={v!r}: must be {what}")
            return None
        return v

    def count(self, key: str, low: int = 1) -> int | None:
        return self.number(key, _int(low), f"an integer >= {low}")

    def choice(self, key: str, allowed: Sequence[Any]) -> Any:
        v = self.value(key)
        if v is not None and v not in allowed:
            self.append(f"{key}={v!r}: must be one of {', '.join(map(repr, allowed))}")
            return None
        return v


# ----------------------------------------------------------------------------- pure checks


def _int(low: int):
    return lambda v: isinstance(v, int) and v >= low


def _num_devices(devices: int | Sequence[Any] | None) -> int:
    import jax

    return devices if isinstance(devices, int) else len(jax.devices() if devices is None else devices)


def mesh_sizes(shape: Mapping[str, int], num_devices: int) -> tuple[dict[str, int] | None, list[str]]:
    """The mesh axis sizes `sharding.make_mesh` would build on `num_devices` devices, or the problems."""
    shape = dict(shape or {"data": -1})
    if set(shape) - set(MESH_AXES):
        return None, [f"mesh: unknown axes {sorted(set(shape) - set(MESH_AXES))}; expected a subset of {MESH_AXES}"]
    sizes = {n: shape.get(n, 1) for n in MESH_AXES}
    if any(isinstance(s, bool) or not isinstance(s, int) or s == 0 or s < -1 for s in sizes.values()):
        return None, [f"mesh {sizes}: axis sizes must be positive integers or -1"]
    free = [n for n, s in sizes.items() if s == -1]
    if len(free) > 1:
        return None, [f"mesh {sizes}: at most one axis may be -1, got {free}"]
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free and num_devices % fixed == 0:
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        return None, [(f"mesh {shape}: the fixed axes multiply to {fixed}, which does not "
                       f"{'divide' if free else 'equal'} the {num_devices} available devices")]
    return sizes, []


def divisible_rows(axis_sizes: Mapping[str, int], rows: int, knob: str) -> str | None:
    """`sharding.require_divisible_rows` on mesh axis sizes (no devices needed): a problem line or None."""
    mesh = AbstractMesh(tuple(axis_sizes.get(a, 1) for a in MESH_AXES), MESH_AXES)
    try:
        sharding.require_divisible_rows(mesh, rows, knob)
    except ValueError as e:
        return f"{knob}: {e}"
    return None


def _train_section(p: _Problems, key: str, axis_sizes: dict[str, int] | None) -> int | None:
    """Checks a trainer section; returns its seq_len (None if unusable)."""
    section = p.value(key)
    if section is None:
        return None
    unknown = set(section.keys()) - {f.name for f in dataclasses.fields(update.TrainConfig)}
    if unknown:
        p.append(f"{key}: unknown fields {sorted(unknown)}")
    p.number(f"{key}.lr", lambda v: v > 0, "> 0")
    seq_len, batch, micro = p.count(f"{key}.seq_len", 2), p.count(f"{key}.batch_size"), section.get("micro_batches", 1)
    for k, ok, what in (("epochs", _int(1), "an integer >= 1"), ("save_every", _int(1), "an integer >= 1"),
                        ("warmup_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"), ("clip_norm", lambda v: v > 0, "> 0")):
        if k in section:
            p.number(f"{key}.{k}", ok, what)
    for k, allowed in (("schedule", ("constant", "cosine")), ("loss_reduction", ("token_mean", "token_sum"))):
        if k in section:
            p.choice(f"{key}.{k}", allowed)
    if batch and (not isinstance(micro, int) or micro < 1 or batch % micro):
        p.append(f"{key}.batch_size={batch} must be a multiple of {key}.micro_batches={micro}")
    elif batch and axis_sizes:
        line = divisible_rows(axis_sizes, batch // micro, f"{key}.batch_size")
        if line:
            p.append(line)
    return seq_len


# ----------------------------------------------------------------------------- the longest episode


def _episode_fits(p: _Problems, chat, found, where: str, turns, new, feedback, positions):
    """((longest prompt, longest episode), where) after checking the episode against the model's positions."""
    if not found or chat is None or not turns or not new or not isinstance(feedback, str):
        return None
    prompt, pid = longest_prompt(chat, found)
    longest = episode_length(prompt, turns, new, len(chat.feedback_ids(feedback)))
    where = f"{where}: the longest prompt (problem {pid}) has {prompt} tokens"
    if positions and longest > positions:
        p.append(f"{where}; with {turns} turns of max_new_tokens={new} an episode reaches {longest} tokens, "
                 f"past the model's max_position_embeddings={positions}")
    return (prompt, longest), where


def episode_length(prompt: int, max_turns: int, max_new_tokens: int, feedback: int) -> int:
    """The longest possible episode: prompt, every turn at max_new_tokens, a closing end of turn and the
    feedback between turns (as `episodes.run_episodes` lays out the cache)."""
    return prompt + max_turns * max_new_tokens + (max_turns - 1) * (feedback + 1)


# ----------------------------------------------------------------------------- the run's config


def problems(cfg: Any, *, devices: int | Sequence[Any] | None = None, workdir: str | None = None) -> list[str]:
    """Every problem of the pipeline config `cfg` on `devices` (a count, a device list; None: jax.devices())."""
    num_devices = _num_devices(devices)
    p = _Problems(cfg)
    methods = p.value("methods")
    methods = tuple(methods) if isinstance(methods, (list, tuple)) else ()
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        p.append(f"methods: unknown {unknown or 'none given'}; available: {', '.join(METHODS)}")
    seed = p.count("seed", 0) or 0
    turns = p.count("max_turns", 1)
    new = p.count("max_new_tokens", 1)
    feedback = p.value("feedback")
    if feedback is not None and (not isinstance(feedback, str) or not feedback.strip()):
        p.append(f"feedback={feedback!r}: must be a non-empty message")

    mesh = p.value("mesh")
    axis_sizes, lines = mesh_sizes(mesh.to_dict() if hasattr(mesh, "to_dict") else dict(mesh or {}), num_devices)
    p.extend(lines)

    offline = [m for m in methods if m in ROLLOUT_METHODS]
    sampled = bool(offline) or "online_rl" in methods
    if sampled:
        p.number("rollout.temperature", lambda v: v > 0, "> 0 (rollouts sample; 0 is greedy)")
        p.number("rollout.top_p", lambda v: 0 < v <= 1, "in (0, 1]")
        p.number("rollout.top_k", _int(0), "an integer >= 0 (0: off)")
        p.count("rollout.num_problems", 1)
    if offline:
        for key in ("rollout.num_samples", "rollout.rows_per_batch", "rollout.problems_per_shard"):
            p.count(key)
        p.number("returns.gamma", lambda v: 0 < v <= 1, "in (0, 1]")
        p.number("returns.format_penalty", lambda v: v <= 0, "<= 0 (it is added)")
        p.number("returns.repeat_penalty", lambda v: v >= 0, ">= 0 (it is subtracted)")
        p.choice("drift.supervision", ("terminal", "all"))
    if "drift" in methods:
        p.number("drift.beta", lambda v: v > 0, "> 0 (the weights are exp(R/beta)/Z)")
        p.choice("drift.normalize", ("group", "batch"))
        p.choice("drift.all_fail", ("keep", "drop", "batch"))
        p.number("drift.clip", lambda v: v >= 0, ">= 0 (0: off)")
    if "online_rl" in methods:
        if (_get(cfg, "rollout.temperature"), _get(cfg, "rollout.top_k"), _get(cfg, "rollout.top_p")) != (1.0, 0, 1.0):
            p.append("online_rl samples from the policy itself: rollout.temperature must be 1, top_k 0, top_p 1")
        p.count("online_rl.samples_per_problem", 2)
        p.count("online_rl.problems_per_iteration")
        p.count("online_rl.eval_every")
        p.number("online_rl.kl_coef", lambda v: v >= 0, ">= 0")
        p.number("online_rl.budget_ratio" if "drift" in methods else "online_rl.budget_seconds",
                 lambda v: v > 0, "> 0")
    p.number("eval.num_problems", _int(0), "an integer >= 0 (0: all)")
    p.count("eval.rows_per_batch", 1)
    p.choice("model.param_dtype", DTYPES), p.choice("model.compute_dtype", DTYPES)
    p.choice("model.remat", ("none", "full", "save_matmuls"))

    # Trainers: batch vs mesh, seq_len; the offline methods' own budgets (epochs; 0: train.epochs).
    budgets = _get(cfg, "budgets", None)
    if budgets is not None:
        for name in budgets.keys():
            if name not in ("drift", "sft_rollouts", "rft", "sft"):
                p.append(f"budgets.{name}: not an offline method (drift, sft_rollouts, rft, sft)")
            else:
                p.number(f"budgets.{name}", _int(0), "an integer >= 0 (epochs; 0: train.epochs)")
    train_seq = _train_section(p, "train", axis_sizes) if offline or "sft" in methods else None
    orl_seq = _train_section(p, "online_rl.train", axis_sizes) if "online_rl" in methods else None

    # The policy (or the scratch reference and its tokenizer), and its chat template.
    hf_path = p.value("model.hf_path")
    if hf_path:
        positions, lines = policy_problems(hf_path, "model.hf_path")
        p.extend(lines)
        chat, lines = chat_problems(hf_path, "model.hf_path") if os.path.isdir(hf_path) else (None, [])
        p.extend(lines)
    else:
        positions = SCRATCH_MAX_POSITIONS
        tok = _get(cfg, "model.tokenizer_path") or str(envs.SYNTHETIC_TOKENIZER)
        chat, lines = chat_problems(tok, "model.tokenizer_path")
        p.extend(lines)
        ref_task = _get(cfg, "reference.task", {}) or {}
        demo_task = ref_task if ref_task.get("name") else (_get(cfg, "task", {}) or {})
        if demo_task.get("name") != "synthetic":
            p.append("model.hf_path is empty, but a reference is trained from scratch only on synthetic "
                     "demonstrations: set --config.model.hf_path to a local HF model directory")
        else:
            s = p.value("model.scratch") or {}
            heads, kv, hidden = s.get("num_heads", 0), s.get("num_kv_heads", 0), s.get("hidden_size", 0)
            if not (heads > 0 and kv > 0 and hidden % heads == 0 and heads % kv == 0):
                p.append(f"model.scratch: hidden_size ({hidden}) must divide by num_heads ({heads}) and "
                         f"num_heads by num_kv_heads ({kv}), all > 0")
            p.count("reference.num_demos", 1)
            p.extend(task_problems(demo_task, "train", 1, seed + 1000, "reference.task")[1])
            _train_section(p, "reference.train", axis_sizes)

    # Tasks: the files exist and parse; the longest possible episode fits the cache and the trainers.
    uses = []
    if sampled or "sft" in methods:
        uses.append(("task", p.value("task") or {}, "train", p.value("rollout.num_problems") or 0, seed))
    eval_task = _get(cfg, "eval.task", {}) or {}
    uses.append(("eval.task" if eval_task.get("name") else "task", eval_task if eval_task.get("name") else
                 (p.value("task") or {}), _get(cfg, "eval.split", "test"), _get(cfg, "eval.num_problems", 0) or 0, seed))
    for what, task, split, n, task_seed in uses:
        found, lines = task_problems(task, split, n if isinstance(n, int) else 0, task_seed, what)
        p.extend(lines)
        fit = _episode_fits(p, chat, found, f"{what} {task.get('name')}/{split}", turns, new, feedback, positions)
        if fit is None or what != "task" or split != "train":
            continue
        (prompt, longest), where = fit
        if train_seq and prompt + new + 1 > train_seq:
            p.append(f"{where}; prompt + one turn of max_new_tokens={new} exceeds train.seq_len={train_seq}")
        elif train_seq and longest > train_seq and offline:
            log.warning("%s; the longest possible trajectory (%d tokens) exceeds train.seq_len=%d: such examples "
                        "lose context from the left", where, longest, train_seq)
        if orl_seq and longest > orl_seq:
            p.append(f"{where}; online RL's trajectories reach {longest} tokens, past online_rl.train.seq_len="
                     f"{orl_seq} (they would be left out)")
    if workdir is not None and not workdir.startswith("gs://"):
        parent = os.path.abspath(workdir)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            p.append(f"workdir: {workdir} is not writable ({parent} denies writing)")
    return list(p)


def check(cfg: Any, *, devices: int | Sequence[Any] | None = None, workdir: str | None = None) -> None:
    """Raises one ConfigError listing every problem of `cfg`; returns None if there is none."""
    found = problems(cfg, devices=devices, workdir=workdir)
    if found:
        raise ConfigError(found)


# ----------------------------------------------------------------------------- the evaluate command line


def check_evaluate(*, policy: str, task: str, split: str, num_problems: int, manual_dir: str | None,
                   max_turns: int, max_new_tokens: int, feedback: str, rows_per_batch: int, dtype: str | None,
                   mesh: Mapping[str, int], devices: int | Sequence[Any] | None = None,
                   knobs: Mapping[str, Any] | None = None, seed: int = 0) -> None:
    """The checks of `problems` that apply to `python -m drift_jax.evaluate`'s flags; raises ConfigError.
    `knobs` and `seed`: the synthetic task's, as the problems will be made (a run's, or the flags')."""
    cfg = {"policy": policy, "max_turns": max_turns, "max_new_tokens": max_new_tokens,
           "rows_per_batch": rows_per_batch, "num_problems": num_problems, "dtype": dtype or ""}
    p = _Problems(cfg)
    turns, new, _ = p.count("max_turns"), p.count("max_new_tokens"), p.count("rows_per_batch")
    p.number("num_problems", _int(0), "an integer >= 0 (0: all)")
    p.choice("dtype", DTYPES)
    if not feedback.strip():
        p.append("feedback: must be a non-empty message")
    p.extend(mesh_sizes(mesh, _num_devices(devices))[1])
    positions, lines = policy_problems(policy, "policy")
    p.extend(lines)
    chat, lines = chat_problems(policy, "policy") if os.path.isdir(policy) else (None, [])
    p.extend(lines)
    n = num_problems or (500 if task == "synthetic" else 0)
    found, lines = task_problems({"name": task, "manual_dir": manual_dir, "knobs": dict(knobs or {})}, split, n, seed,
                                 "task")
    p.extend(lines)
    _episode_fits(p, chat, found, f"task {task}/{split}", turns, new, feedback, positions)
    if p:
        raise ConfigError(p)
