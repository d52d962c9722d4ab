"""The DRIFT pipeline as cached stages: reference -> rollouts -> weights -> weighted SFT -> eval -> report.

Baselines run in the same pipeline (`cfg.methods`): the offline ones (`sft`, `sft_rollouts`, `rft`)
share DRIFT's rollouts and trainer; `online_rl` trains from the reference with the same sampler,
environment, return and trainer, under a wall-time budget of `cfg.online_rl.budget_ratio` x DRIFT's.

The config is validated before any stage runs (`validate.py`). Every stage writes its outputs under the
workdir and, last, a marker `stages/<name>.json` holding its wall time, summary, the config values it
read and its inputs' digests (`stages.py`); a rerun skips a stage only if those are unchanged, and
resumes the one that stopped (rollout shards and trainer checkpoints resume inside a stage). `plan`
declares what each stage reads. What a stage is given (the libraries' configs, the problems) and how
policies are exchanged (HF directories) is `stage_io.py`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from drift_jax import envs, validate
from drift_jax.baselines import offline, online_rl
from drift_jax.evaluation import held_out, report
from drift_jax.lm import model, sharding
from drift_jax.rollout import driver, returns, supervision
from drift_jax.rollout.weights import drift_weights, weight_diagnostics
from drift_jax.runtime import files, hosts
from drift_jax.stage_io import (
    chat_format,
    curve_problems,
    engine_config,
    episode_config,
    eval_problems,
    load_policy,
    method_train,
    problems,
    return_config,
    save_policy,
    shared_write,
    train_config,
)
from drift_jax.stages import Stage, Stages, reads
from drift_jax.train import batches, trainer

log = logging.getLogger(__name__)
# Methods trained offline from the fixed reference: DRIFT and the baselines that share its data and trainer.
OFFLINE_METHODS = ("drift", "sft_rollouts", "rft", "sft")
METHODS = validate.METHODS


# ----------------------------------------------------------------------------- stages


def stage_reference(cfg, workdir: str, mesh) -> dict[str, Any]:
    """A local HF checkpoint as is, or (synthetic task) a tiny model trained from scratch on demonstrations."""
    out = files.join(workdir, "reference")
    if cfg.model.hf_path:
        return {"path": cfg.model.hf_path}
    chat = envs.ChatFormat.from_pretrained(cfg.model.tokenizer_path or envs.SYNTHETIC_TOKENIZER)
    s = cfg.model.scratch
    model_config = model.ModelConfig(
        vocab_size=chat.tokenizer.get_vocab_size(), hidden_size=s.hidden_size, num_layers=s.num_layers,
        num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, head_dim=s.hidden_size // s.num_heads,
        mlp_dim=s.mlp_dim, qkv_bias=True, tie_embeddings=False, architecture="qwen2",
        max_position_embeddings=validate.SCRATCH_MAX_POSITIONS,
    )
    ref = cfg.reference
    # The demonstrations may come from a related task (ref.task), as an instruct model's data differs
    # from the task DRIFT is then run on.
    demo_problems = problems(cfg, "train", ref.num_demos, seed_offset=1000, task=ref.task if ref.task.name else None)
    transcripts = envs.synthetic.demonstrations(demo_problems, seed=cfg.seed, max_wrong_turns=ref.max_wrong_turns,
                                                feedback=cfg.feedback)
    examples = supervision.examples_from_messages(chat, transcripts, ref.train.seq_len)
    with shared_write("demos") as writer:
        if writer:
            batches.write_examples(files.join(out, "demos.arrayrecord"), examples)
    init = lambda: model.init_sharded(model_config, jax.random.key(cfg.seed), mesh)  # noqa: E731
    params = trainer.run(train_config(ref.train, cfg.seed), model_config, files.join(out, "demos.arrayrecord"),
                         init, files.join(out, "train"), mesh)
    save_policy(model_config, params, str(cfg.model.tokenizer_path or envs.SYNTHETIC_TOKENIZER), files.join(out, "hf"))
    return {"path": files.join(out, "hf"), "demonstrations": len(examples), "params": model_config.num_params}


def stage_rollouts(cfg, workdir: str, mesh, ref_path: str) -> dict[str, Any]:
    """Each host writes its own shards on its own devices (no collective until every shard is written)."""
    model_config, params, chat = load_policy(ref_path, hosts.local_mesh(mesh), cfg)
    r = cfg.rollout
    rc = driver.RolloutConfig(
        num_samples=r.num_samples, episode=episode_config(cfg, sample=True),
        problems_per_shard=r.problems_per_shard, rows_per_batch=r.rows_per_batch, seed=cfg.seed,
        engine=engine_config(r),
    )
    stats = driver.rollout(params, model_config, chat, problems(cfg, "train", r.num_problems), rc,
                           files.join(workdir, "rollouts"), mesh=hosts.local_mesh(mesh))
    hosts.barrier("rollouts_written")  # every host's shards are whole before anyone reads them
    records = driver.read_rollouts(files.join(workdir, "rollouts"))
    solved = np.array([rec["solved_turn"] for rec in records])
    return {**{k: float(v) for k, v in stats.items()}, "trajectories_total": len(records),
            "success_rate": float(np.mean(solved > 0)),
            "tokens_generated": int(sum(len(t["response_ids"]) for rec in records for t in rec["turns"]))}


def stage_weights(cfg, workdir: str, ref_path: str, *, name: str = "drift") -> dict[str, Any]:
    """Returns -> weights -> weighted examples (`drift`), or the baselines' data from the same rollouts:
    uniform weights (`sft_rollouts`, the paper's SFT-5turn) or successful trajectories only (`rft`)."""
    records = driver.read_rollouts(files.join(workdir, "rollouts"))
    chat = chat_format(ref_path)
    # Recomputed from the recorded turns, so a sweep over gamma or the penalties reuses the rollouts.
    return_cfg = return_config(cfg)
    returns_N = np.array([returns.record_return(rec, return_cfg) for rec in records], np.float32)
    groups = np.array([rec["problem_id"] for rec in records])
    success = np.array([rec["solved_turn"] > 0 for rec in records])
    d = cfg.drift
    if name in offline.ROLLOUT_BASELINES:
        w = offline.rollout_weights(name, success)
    else:
        w = np.asarray(drift_weights(returns_N, groups, d.beta, normalize=d.normalize, all_fail=d.all_fail,
                                     clip=d.clip or None, success_N=success))
    examples = []
    for rec, wi in zip(records, w):
        if wi <= 0:
            continue
        ex = supervision.make_example(rec, float(wi), end_of_turn=chat.end_of_turn_id, stop_tokens=chat.stop_token_ids,
                                      supervision=d.supervision, max_length=cfg.train.seq_len)
        if ex is not None:
            examples.append(ex)
    if not examples:
        raise ValueError(
            f"{name}: no trajectory has a positive weight ({int(success.sum())} of {len(records)} succeeded, "
            f"drift.all_fail={d.all_fail!r}); sample more (rollout.num_samples), or keep failed groups"
        )
    with shared_write(f"examples:{name}") as writer:
        if writer:
            batches.write_examples(files.join(workdir, name, "examples.arrayrecord"), examples)
            npy = io.BytesIO()
            np.save(npy, w)
            files.write_bytes(files.join(workdir, name, "weights.npy"), npy.getvalue())
    diag = weight_diagnostics(w, groups)
    scalars = {k: float(v) for k, v in diag.items() if np.ndim(v) == 0}
    return {"examples": len(examples), "mean_return": float(returns_N.mean()), **scalars}


def stage_sft_data(cfg, workdir: str, ref_path: str) -> dict[str, Any]:
    """The `sft` baseline's data: single-turn chats answering the rollout problems with the gold answer."""
    chat = chat_format(ref_path)
    transcripts = offline.gold_chats(problems(cfg, "train", cfg.rollout.num_problems))
    examples = supervision.examples_from_messages(chat, transcripts, cfg.train.seq_len)
    with shared_write("examples:sft") as writer:
        if writer:
            batches.write_examples(files.join(workdir, "sft", "examples.arrayrecord"), examples)
    return {"examples": len(examples)}


def stage_train(cfg, workdir: str, mesh, ref_path: str, name: str) -> dict[str, Any]:
    model_config, params, _ = load_policy(ref_path, mesh, cfg)
    out = files.join(workdir, name)
    src = batches.ExampleSource(files.join(out, "examples.arrayrecord"))
    tokens = sum(int(np.count_nonzero(src[i]["loss_mask"])) for i in range(len(src)))
    config = train_config(method_train(cfg, name), cfg.seed)
    steps = config.max_steps or batches.Batcher(src, config.batch_config()).total_steps(config.epochs)
    params = trainer.run(config, model_config, src, params, files.join(out, "train"), mesh)
    save_policy(model_config, params, ref_path, files.join(out, "hf"))
    return {"path": files.join(out, "hf"), "scored_tokens_per_epoch": tokens, "optimizer_steps": int(steps)}


def stage_online_rl(cfg, workdir: str, mesh, ref_path: str, budget_seconds: float) -> dict[str, Any]:
    """Online multi-turn RL from the reference on the rollouts' problems. Its learning curve (greedy
    multi@max_turns), which also decides whether to extend the budget, is measured on the dev split of the
    evaluation task, never on the test problems: those are read once, by its eval stage."""
    model_config, ref_params, chat = load_policy(ref_path, mesh, cfg)
    o = cfg.online_rl
    config = online_rl.OnlineRLConfig(
        problems_per_iteration=o.problems_per_iteration, samples_per_problem=o.samples_per_problem,
        kl_coef=o.kl_coef, scale_by_std=o.scale_by_std, budget_seconds=budget_seconds,
        extend_while_rising=o.extend_while_rising, max_iterations=o.max_iterations, eval_every=o.eval_every,
        save_every=o.eval_every, seed=cfg.seed,
    )
    dev = curve_problems(cfg)
    greedy = episode_config(cfg, sample=False)

    def multi_at_max(params) -> float:
        result = held_out.evaluate(params, model_config, chat, dev, greedy, mesh=mesh,
                                   rows_per_batch=cfg.eval.rows_per_batch, engine=engine_config(cfg.eval))
        return result[f"multi@{cfg.max_turns}"]

    out = files.join(workdir, "online_rl")
    params, progress = online_rl.run(
        config, train_config(o.train, cfg.seed), model_config, chat, ref_params,
        problems(cfg, "train", cfg.rollout.num_problems), episode_config(cfg, sample=True), return_config(cfg),
        multi_at_max, files.join(out, "train"), mesh,
    )
    save_policy(model_config, params, ref_path, files.join(out, "hf"))
    return {"path": files.join(out, "hf"), "budget_seconds": budget_seconds, "iterations": progress["iteration"],
            "sampling_and_training_seconds": progress["seconds"], "optimizer_steps": progress["optimizer_steps"],
            "tokens_generated": progress["tokens_generated"], "tokens_trained": progress["tokens_trained"],
            "curve": progress["curve"]}


def stage_eval(cfg, workdir: str, mesh, policy_path: str, name: str) -> dict[str, Any]:
    model_config, params, chat = load_policy(policy_path, mesh, cfg)
    result = held_out.evaluate(params, model_config, chat, eval_problems(cfg), episode_config(cfg, sample=False),
                               mesh=mesh, rows_per_batch=cfg.eval.rows_per_batch, engine=engine_config(cfg.eval))
    with shared_write(f"eval_{name}") as writer:
        if writer:
            files.write_text(files.join(workdir, f"eval_{name}.json"), json.dumps(result, indent=2))
    return {k: v for k, v in result.items() if k.startswith("multi@")}


# ----------------------------------------------------------------------------- the run


_TRAIN_LOGISTICS = ("progress_bar", "save_every", "keep", "async_checkpoints", "peak_flops_per_device")


def _train_reads(section: ml_collections.ConfigDict) -> dict[str, Any]:
    """A trainer section without the knobs that do not change what is trained."""
    return {k: v for k, v in section.to_dict().items() if k not in _TRAIN_LOGISTICS}


def plan(cfg: ml_collections.ConfigDict) -> list[Stage]:
    """The stages `run` will run for this config, in order: the config values and stages each one reads."""
    dtypes, episode = ("model.param_dtype", "model.compute_dtype"), ("seed", "max_turns", "max_new_tokens", "feedback")
    sampling = tuple(f"rollout.{k}" for k in ("num_problems", "temperature", "top_k", "top_p"))
    evals = ("eval.task", "eval.split", "eval.num_problems", *(() if cfg.eval.task.name else ("task",)))
    if cfg.model.hf_path:
        out = [Stage("reference", reads(cfg, "model.hf_path"), outputs=(files.absolute(cfg.model.hf_path),))]
    else:
        demos = () if cfg.reference.task.name else ("task",)
        scratch = ("model.hf_path", "seed", "feedback", "model.tokenizer_path", "model.scratch", *demos,
                   *(f"reference.{k}" for k in ("num_demos", "max_wrong_turns", "task")))
        out = [Stage("reference", reads(cfg, *scratch, **{"reference.train": _train_reads(cfg.reference.train)}),
                     outputs=("reference/hf",), work=("reference/train", "reference/demos.arrayrecord"))]

    def evaluation(name: str, policy_stage: str) -> Stage:
        return Stage(f"eval_{name}", reads(cfg, *episode, *dtypes, *evals), (policy_stage,), (f"eval_{name}.json",))

    if "reference" in cfg.methods:
        out.append(evaluation("reference", "reference"))
    for name in [m for m in cfg.methods if m in OFFLINE_METHODS]:
        if name != "sft" and "rollouts" not in {s.name for s in out}:
            out.append(Stage("rollouts", reads(cfg, *episode, *dtypes, "task", *sampling, "rollout.num_samples",
                                               "rollout.problems_per_shard"), ("reference",), ("rollouts",)))
        data = f"{name}/examples.arrayrecord"
        if name == "sft":
            out.append(Stage("data_sft", reads(cfg, "seed", "task", "rollout.num_problems", "train.seq_len"),
                             ("reference",), (data,)))
        else:
            keys = ("returns", "drift") if name == "drift" else ("drift.supervision",)
            out.append(Stage("weights" if name == "drift" else f"data_{name}", reads(cfg, *keys, "train.seq_len"),
                             ("reference", "rollouts"), (data, f"{name}/weights.npy")))
        out.append(Stage(f"train_{name}", reads(cfg, "seed", *dtypes, train=_train_reads(method_train(cfg, name))),
                         ("reference", out[-1].name), (f"{name}/hf",), work=(f"{name}/train",)))
        out.append(evaluation(name, f"train_{name}"))
    if "online_rl" in cfg.methods:
        o = {k: v for k, v in cfg.online_rl.to_dict().items() if k != "train"}
        curve = ("eval.task", "eval.num_problems", *(() if cfg.eval.task.name else ("task",)))  # dev: no eval.split
        out.append(Stage("online_rl", reads(cfg, *episode, *dtypes, *curve, "task", "returns", *sampling, online_rl=o,
                                            **{"online_rl.train": _train_reads(cfg.online_rl.train)}),
                         ("reference",), ("online_rl/hf",), work=("online_rl/train",)))
        out.append(evaluation("online_rl", "online_rl"))
    return out


def run(cfg: ml_collections.ConfigDict, workdir: str, precompile: bool = False, *, on_change: str = "error") -> dict[str, Any]:
    """Runs (or resumes) every stage; returns results.json's content.

    The config is validated first (all problems at once, `validate.ConfigError`). Stages cached by an earlier
    run in `workdir` are reused only if the config values and inputs they read are unchanged; otherwise
    `on_change="error"` stops with what changed (`stages.StaleStageError`) and `"recompute"` recomputes the
    changed stages and everything downstream. Each run's config is kept in `workdir/run_configs/`.
    """
    validate.check(cfg, workdir=workdir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    if hosts.is_writer():
        files.write_text(files.join(workdir, "run_configs", f"{stamp}-{os.getpid()}.json"),
                         cfg.to_json_best_effort(indent=2))
    mesh = sharding.make_mesh(cfg.mesh.to_dict())
    if precompile:  # every stage compiled on these devices first: one that does not fit stops the run here
        from drift_jax.preflight import report as preflight  # noqa: PLC0415  (only a precompiling run needs it)

        preflight.precompile(cfg, mesh, files.join(workdir, "preflight.json"))
    stages = Stages(workdir, plan(cfg), on_change, is_writer=hosts.is_writer())
    ref = stages.run("reference", lambda: stage_reference(cfg, workdir, mesh))
    ref_path = ref["path"]
    methods: dict[str, dict[str, Any]] = {}
    stage_seconds = {"reference": ref["seconds"]}
    if "reference" in cfg.methods:
        ev = stages.run("eval_reference", lambda: stage_eval(cfg, workdir, mesh, ref_path, "reference"))
        methods["reference"] = _method_entry(workdir, "reference", ref["seconds"], {})  # its training, if any
        stage_seconds["eval_reference"] = ev["seconds"]
    for name in [m for m in cfg.methods if m in OFFLINE_METHODS]:
        cost, extra = 0.0, {}
        if name != "sft":  # every other method learns from the same reference rollouts
            ro = stages.run("rollouts", lambda: stage_rollouts(cfg, workdir, mesh, ref_path))
            cost += ro["seconds"]
            extra["tokens_generated"] = ro["tokens_generated"]
            stage_seconds["rollouts"] = ro["seconds"]
        data_stage = "weights" if name == "drift" else f"data_{name}"
        if name == "sft":
            dt = stages.run(data_stage, lambda: stage_sft_data(cfg, workdir, ref_path))
        else:
            dt = stages.run(data_stage, lambda n=name: stage_weights(cfg, workdir, ref_path, name=n))
        tr = stages.run(f"train_{name}", lambda n=name: stage_train(cfg, workdir, mesh, ref_path, n))
        ev = stages.run(f"eval_{name}", lambda n=name, path=tr["path"]: stage_eval(cfg, workdir, mesh, path, n))
        cost += dt["seconds"] + tr["seconds"]
        extra["epochs"] = method_train(cfg, name).epochs
        extra["tokens_trained"] = tr["scored_tokens_per_epoch"] * extra["epochs"]
        if "optimizer_steps" in tr:  # absent from a train stage cached before it was recorded
            extra["optimizer_steps"] = tr["optimizer_steps"]
        methods[name] = _method_entry(workdir, name, cost, extra)
        stage_seconds.update({data_stage: dt["seconds"], f"train_{name}": tr["seconds"], f"eval_{name}": ev["seconds"]})
    curves, notes, key = {}, [], f"multi@{cfg.max_turns}"
    if "drift" in methods:  # from the reference (time 0) to DRIFT's result after its rollouts + training
        start = [(0.0, methods["reference"][key])] if "reference" in methods else []
        curves["drift"] = start + [(methods["drift"]["wall_seconds"], methods["drift"][key])]
    if "online_rl" in cfg.methods:
        o = cfg.online_rl
        budget = o.budget_ratio * methods["drift"]["wall_seconds"] if "drift" in methods else o.budget_seconds
        orl = stages.run("online_rl", lambda: stage_online_rl(cfg, workdir, mesh, ref_path, budget))
        ev = stages.run("eval_online_rl", lambda: stage_eval(cfg, workdir, mesh, orl["path"], "online_rl"))
        curves["online_rl (dev split)"] = [(p["seconds"], p["value"]) for p in orl["curve"]]
        # Its wall time counts sampling and training, not the learning-curve evaluations.
        methods["online_rl"] = _method_entry(workdir, "online_rl", orl["sampling_and_training_seconds"], {
            k: orl[k] for k in ("tokens_generated", "tokens_trained", "iterations", "optimizer_steps", "budget_seconds")
        } | {"curve": [list(p) for p in curves["online_rl (dev split)"]]})
        notes.append(_online_rl_note(orl, methods.get("drift"), key))
        stage_seconds.update({"online_rl": orl["seconds"], "eval_online_rl": ev["seconds"]})
    results_path = files.join(workdir, "results.json")
    with shared_write("results") as writer:
        if writer:
            report.write_results(results_path, methods, {"max_turns": cfg.max_turns, "task": cfg.task.name})
            diag, weights_N = None, None
            if "drift" in methods:
                diag = stages.get("weights")
                weights_N = np.load(io.BytesIO(files.path(files.join(workdir, "drift", "weights.npy")).read_bytes()))
            report.write_report(workdir, methods, cfg.max_turns, stage_seconds=stage_seconds,
                                weight_diagnostics=diag, weights_N=weights_N, curves=curves, notes=notes)
    return json.loads(files.read_text(results_path))


def _online_rl_note(orl: dict[str, Any], drift: dict[str, Any] | None, key: str) -> str:
    """Where online RL stood when it had spent DRIFT's wall time, and what budget it had in all."""
    note = (f"online_rl: {orl['iterations']} iterations, {orl['sampling_and_training_seconds']:.0f}s of sampling "
            f"and training against a budget of {orl['budget_seconds']:.0f}s; final {key} {100 * orl['curve'][-1]['value']:.1f} on dev")
    if drift is None:
        return note
    before = [p for p in orl["curve"] if p["seconds"] <= drift["wall_seconds"]][-1]
    return note + (f" (curve on the dev split). At DRIFT's wall time ({drift['wall_seconds']:.0f}s) its curve "
                   f"stood at {100 * before['value']:.1f} on dev (iteration {before['iteration']}); DRIFT: "
                   f"{100 * drift[key]:.1f} on the evaluation split")


def _method_entry(workdir: str, name: str, wall_seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    ev = json.loads(files.read_text(files.join(workdir, f"eval_{name}.json")))
    entry = {k: v for k, v in ev.items() if k.startswith("multi@")}
    return {**entry, "correction_rates": ev["correction_rates"], "wall_seconds": wall_seconds, **extra}
