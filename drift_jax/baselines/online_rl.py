"""Online multi-turn RL baseline (UFO-style): episodes from the current policy, on-policy policy-gradient steps.

DRIFT optimises  E_pi[R] - beta * KL(pi || pi_ref)  offline; this baseline optimises the same objective
online, so the two can be compared on one task at matched or larger compute:

    repeat until the wall-time budget is spent:
        P problems x K samples: multi-turn episodes from the current policy (temperature 1, the same
            environment, feedback and return as the rollouts)                  -> episodes.run_episodes
        R'_i = R_i - kl_coef * sum_t [log pi(a_t) - log pi_ref(a_t)]            (k1 estimate over the sampled
                                          tokens; log pi as the sampler computed it, log pi_ref by one forward)
        A_i  = R'_i - mean of R' over the problem's K samples  (/ their std if scale_by_std, as GRPO)
        one optimiser step on  sum_i A_i * NLL_i / (P K)  over every assistant turn  -> update.train_step

All of an iteration's trajectories go into one optimiser step (the batch must hold them; if it cannot,
the extra steps are taken on the same samples and logged), so the gradient is exactly on-policy and no
importance ratio or clipping is needed. Sampler and trainer are the library's own: `run_episodes` and
`update.compile_train_step` with `batches.Batcher` batches whose examples carry weight A_i and mass 1.

Budget: only sampling, scoring and training count towards `budget_seconds` (learning-curve evaluations
do not). At the budget the run stops unless its held-out multi@k is still rising, up to
`extend_while_rising` times the budget. Checkpoints (state + iteration + curve) make the stage resumable.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from drift_jax.envs import ChatFormat, Problem
from drift_jax.lm.model import ModelConfig, Params
from drift_jax.rollout import episodes, returns, supervision
from drift_jax.runtime import clock, files, hosts
from drift_jax.train import batches, checkpoint, trainer, update

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OnlineRLConfig:
    problems_per_iteration: int = 32
    samples_per_problem: int = 8  # K: the group whose mean return is the baseline
    kl_coef: float = 0.01  # the objective's beta; DRIFT's 0.1 held online RL back on the quickstart (README)
    scale_by_std: bool = False  # GRPO divides centred returns by the group std; Dr. GRPO does not
    budget_seconds: float = 600.0  # sampling + scoring + training wall time
    extend_while_rising: float = 2.0  # past the budget, go on while multi@k rises, up to this x budget
    rise_threshold: float = 0.005  # "rising": the newest point beats every earlier one by this much
    max_iterations: int = 0  # 0: the budget alone decides
    eval_every: int = 10  # iterations between learning-curve points
    save_every: int = 10  # iterations between checkpoints
    seed: int = 0


def iteration_problems(num_problems: int, per_iteration: int, iteration: int, seed: int) -> np.ndarray:
    """Indices of the problems of `iteration`: epochs of seeded permutations, read in order."""
    idx = np.arange(iteration * per_iteration, (iteration + 1) * per_iteration)
    epochs = idx // num_problems
    perms = {e: np.random.default_rng([seed, int(e)]).permutation(num_problems) for e in np.unique(epochs)}
    return np.array([perms[e][i % num_problems] for e, i in zip(epochs, idx)])


def advantages(returns_N: np.ndarray, groups_N: np.ndarray, *, scale_by_std: bool, eps: float = 1e-6) -> np.ndarray:
    """Returns minus their group's mean (optionally over the group's std)."""
    returns_N = np.asarray(returns_N, np.float64)
    _, inverse = np.unique(groups_N, return_inverse=True)
    count = np.bincount(inverse)
    mean = np.bincount(inverse, returns_N) / count
    centred = returns_N - mean[inverse]
    if scale_by_std:
        std = np.sqrt(np.bincount(inverse, centred**2) / count)
        centred = centred / (std[inverse] + eps)
    return centred.astype(np.float32)


@functools.partial(jax.jit, static_argnames="model_config")
def _target_logprobs(params: Params, model_config: ModelConfig, batch: dict[str, jax.Array]) -> jax.Array:
    """log p(target) at every scored position of a packed [M, R, T] batch (0 elsewhere), one micro-batch at a time."""

    return jax.lax.map(functools.partial(update.target_logprobs, params, model_config),
                       {k: batch[k] for k in ("tokens", "positions", "segment_ids", "targets", "scored")})


def sequence_logprobs(params: Params, model_config: ModelConfig, batcher: batches.Batcher, steps: int, mesh) -> np.ndarray:
    """log pi(scored tokens) of each example of `batcher`'s first `steps` batches (packed as for training)."""
    out = np.zeros(len(batcher.source), np.float64)
    for step in range(steps):
        batch = batcher.global_batch(step, mesh)
        with jax.set_mesh(mesh):
            logp_MxRxT = _target_logprobs(params, model_config, batch)
        logp_RxT = hosts.to_host(logp_MxRxT).reshape(-1, batcher.config.seq_len)
        segments_RxT = hosts.to_host(batch["segment_ids"]).reshape(logp_RxT.shape)
        for row, ids in enumerate(batcher.batch_rows(step)):
            if ids:  # segment s of the row is example ids[s - 1]
                out[ids] = np.bincount(segments_RxT[row], logp_RxT[row], minlength=len(ids) + 1)[1:]
    return out


def rl_example(record: dict[str, Any], end_of_turn: int, stop_tokens: Sequence[int] = ()) -> dict[str, Any]:
    """A trajectory as a training example that scores exactly the sampled tokens: every assistant turn,
    but not the end-of-turn token closing a turn cut at max_new_tokens (the policy never chose it)."""
    responses = [t["response_ids"] for t in record["turns"]]
    tokens, turn_of_token = supervision.trajectory_tokens(
        record["prompt_ids"], responses, [t["feedback_ids"] for t in record["turns"]], end_of_turn, stop_tokens)
    mask = turn_of_token > 0
    for t, response in enumerate(responses, start=1):
        if not supervision.is_closed(response, end_of_turn, stop_tokens):  # closed by trajectory_tokens: unscore it
            mask[np.flatnonzero(turn_of_token == t)[-1]] = False
    return {"tokens": tokens, "loss_mask": mask.astype(np.int8), "weight": np.float32(0.0), "mass": np.float32(1.0),
            "group_id": record["problem_id"], "example_id": f"{record['problem_id']}/{record['sample']}"}


def _constant_schedule(train_config: update.TrainConfig, config: OnlineRLConfig) -> tuple[update.TrainConfig, int]:
    """(train config, total steps) for a run whose length the budget decides: a constant learning rate
    after `warmup_steps`, or after `warmup_ratio` of `max_iterations` when that is set. A ratio of an
    unknown length would be a ratio of a placeholder (it once left the lr near zero for 2^30 steps)."""
    if train_config.schedule != "constant":
        raise ValueError(f"online RL runs until its budget is spent: schedule must be 'constant', "
                         f"got {train_config.schedule!r}")
    warmup = train_config.warmup_steps
    if warmup is None:
        if train_config.warmup_ratio > 0 and not config.max_iterations:
            raise ValueError("online RL: warmup_ratio needs max_iterations (the run's length); set warmup_steps instead")
        warmup = int(train_config.warmup_ratio * config.max_iterations)
    total = max(config.max_iterations, warmup + 1)
    return dataclasses.replace(train_config, warmup_steps=warmup), total


def _should_stop(config: OnlineRLConfig, progress: dict[str, Any]) -> bool:
    """Past the budget, decided at each curve point: stop unless the newest point beats every earlier
    one by rise_threshold; always stop at extend_while_rising x the budget."""
    curve, spent = progress["curve"], progress["seconds"]
    if spent < config.budget_seconds or curve[-1]["iteration"] != progress["iteration"]:
        return False
    rising = len(curve) >= 2 and curve[-1]["value"] > max(p["value"] for p in curve[:-1]) + config.rise_threshold
    return spent >= config.extend_while_rising * config.budget_seconds or not rising


def run(
    config: OnlineRLConfig,
    train_config: update.TrainConfig,
    model_config: ModelConfig,
    chat: ChatFormat,
    ref_params: Params,
    problems: Sequence[Problem],
    episode: episodes.EpisodeConfig,
    return_config: returns.ReturnConfig,
    evaluate: Callable[[Params], float],
    workdir: str,
    mesh,
) -> tuple[Params, dict[str, Any]]:
    """Trains online from the reference; returns (params, summary with the learning `curve`).

    `evaluate(params)` gives the held-out multi@k of a policy: a curve point (iteration, seconds, value)
    is taken before the first iteration, every `eval_every` iterations and at the end.
    """
    if episode.temperature != 1.0 or episode.top_k or episode.top_p != 1.0:
        raise ValueError("online RL samples from the policy itself: temperature 1, no top-k/top-p")
    if config.samples_per_problem < 2:
        raise ValueError("the group baseline needs samples_per_problem >= 2")
    workdir = files.absolute(workdir)
    k = config.samples_per_problem
    rows_per_iteration = config.problems_per_iteration * k
    batch_config = dataclasses.replace(train_config.batch_config(), drop_remainder=False)
    tx = update.make_optimizer(*_constant_schedule(train_config, config))
    state_sh = update.state_shardings(mesh, model_config, tx)
    batch_sh = update.batch_shardings(mesh, batches.batch_shapes(batch_config))
    step_fn = update.compile_train_step(model_config, tx, mesh, state_sh, batch_sh)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, async_save=False)
    restored = ckpt.restore_latest(update.abstract_state(model_config, tx, state_sh))
    work = clock.current()  # the stage's seconds (curve evaluations included), stored with each checkpoint
    if restored is not None:
        _, state, progress = restored
        work.resumed(progress.pop("stage_seconds", None))
        log.info("online RL resumed at iteration %d (%.0fs spent)", progress["iteration"], progress["seconds"])
    else:
        state = update.sharded_state(ref_params, tx, state_sh)
        progress = {"iteration": 0, "seconds": 0.0, "tokens_generated": 0, "tokens_trained": 0, "optimizer_steps": 0,
                    "curve": [{"iteration": 0, "seconds": 0.0, "value": evaluate(state.params)}]}
    writer = trainer.MetricWriter(workdir)
    local = hosts.local_mesh(mesh)
    try:
        while True:
            it, spent = progress["iteration"], progress["seconds"]
            if _should_stop(config, progress) or (config.max_iterations and it >= config.max_iterations):
                break
            start = time.perf_counter()
            picked = iteration_problems(len(problems), config.problems_per_iteration, it, config.seed)
            batch_problems = [problems[i] for p in picked for i in [p] * k]
            # Each host samples its share of the rows on its own devices; every host then holds all records.
            samples = [s for _ in picked for s in range(k)]
            mine = hosts.my_range(len(batch_problems))
            records = hosts.allgather_objects(episodes.run_episodes(
                hosts.localize(state.params, local), model_config, chat, [batch_problems[i] for i in mine],
                [samples[i] for i in mine], episode, seed=(config.seed * 1_000_003 + it + 1) % 2**31, mesh=local,
                pad_rows_to=-(-rows_per_iteration // jax.process_count()),
            ))
            sampled = time.perf_counter()
            examples, rec_kept = [], []
            for rec in records:  # whole trajectories only: a cut prompt changes the logprobs
                ex = rl_example(rec, chat.end_of_turn_id, chat.stop_token_ids)
                if len(ex["tokens"]) <= train_config.seq_len and ex["loss_mask"].any():
                    examples.append(ex)
                    rec_kept.append(rec)
            if len(rec_kept) < len(records):
                log.warning("online RL: %d of %d trajectories do not fit seq_len=%d and are left out",
                            len(records) - len(rec_kept), len(records), train_config.seq_len)
            batcher = batches.Batcher(batches.ExampleSource(examples), dataclasses.replace(batch_config, seed=config.seed + it))
            steps = batcher.total_steps(1)
            if steps > 1:
                log.warning("online RL: iteration %d needs %d optimiser steps (batch_size %d rows holds fewer "
                            "trajectories than the %d sampled); later steps are slightly off-policy",
                            it, steps, batch_config.batch_size, len(examples))
            # log pi of the sampled tokens as the sampler computed them (at temperature 1: the policy's own).
            logp_pi_N = np.array([sum(sum(t["logprobs"]) for t in r["turns"]) for r in rec_kept])
            kl_N = logp_pi_N - sequence_logprobs(ref_params, model_config, batcher, steps, mesh)
            task_return_N = np.array([returns.record_return(r, return_config) for r in rec_kept], np.float32)
            groups_N = np.array([r["problem_id"] for r in rec_kept])
            adv_N = advantages(task_return_N - config.kl_coef * kl_N, groups_N, scale_by_std=config.scale_by_std)
            for ex, a in zip(examples, adv_N):  # the batcher reads them when it builds the training batches
                ex["weight"] = np.float32(a)
            scored = time.perf_counter()
            with jax.set_mesh(mesh):
                for s in range(steps):
                    state, metrics = step_fn(state, batcher.global_batch(s, mesh))
                metrics = {k_: float(v) for k_, v in jax.device_get(metrics).items()}
            if not np.isfinite(metrics["loss"]):
                raise trainer.NonFiniteLossError(f"online RL: loss {metrics['loss']} at iteration {it}")
            seconds = hosts.agree(time.perf_counter() - start)  # the budget decides the same on every host
            progress = {
                **progress, "iteration": it + 1, "seconds": spent + seconds,
                "tokens_generated": progress["tokens_generated"] + sum(
                    len(t["response_ids"]) for r in records for t in r["turns"]),
                "tokens_trained": progress["tokens_trained"] + sum(int(e["loss_mask"].sum()) for e in examples),
                "optimizer_steps": progress["optimizer_steps"] + steps,
            }
            solved = np.array([r["solved_turn"] > 0 for r in rec_kept])
            writer.write(it + 1, {
                "return": float(task_return_N.mean()), "success": float(solved.mean()), "kl": float(kl_N.mean()),
                "loss": metrics["loss"], "grad_norm": metrics["grad_norm"], "iteration_seconds": seconds,
                "sampling_seconds": sampled - start, "scoring_seconds": scored - sampled,
                "seconds": progress["seconds"],
            })
            # Curve points: every eval_every iterations, where the budget is crossed, and at the hard limit.
            crossed = spent < config.budget_seconds <= progress["seconds"]
            at_limit = progress["seconds"] >= config.extend_while_rising * config.budget_seconds
            if (it + 1) % config.eval_every == 0 or crossed or at_limit or (it + 1) == config.max_iterations:
                value = evaluate(state.params)
                progress["curve"] = progress["curve"] + [{"iteration": it + 1, "seconds": progress["seconds"], "value": value}]
                log.info("online RL iteration %d: %.0fs, success %.3f, kl %.3f, held-out %.3f",
                         it + 1, progress["seconds"], solved.mean(), kl_N.mean(), value)
            if (it + 1) % config.save_every == 0:
                ckpt.save(it + 1, state, {**progress, "stage_seconds": work.elapsed()})
        if progress["curve"][-1]["iteration"] != progress["iteration"]:
            value = evaluate(state.params)
            progress["curve"] = progress["curve"] + [
                {"iteration": progress["iteration"], "seconds": progress["seconds"], "value": value}]
        if progress["iteration"] not in ckpt.all_steps():
            ckpt.save(progress["iteration"], state, {**progress, "stage_seconds": work.elapsed()})
        ckpt.wait()
    finally:
        ckpt.close()
        writer.close()
    return state.params, progress
