"""Multi-turn episodes: generate, verify, feed back, repeat; one trajectory record per (problem, sample).

One function, `run_episodes`, serves both the rollouts (K samples per problem at temperature 1) and the
evaluation (greedy), so both see the same template, feedback and token layout. It plays the episodes
on the rollout engine (`engine.run`: continuous batching, no turn barrier). `run_episodes_static` is
the previous engine (all rows of a batch in flight together, every turn a barrier), kept as the
baseline of benchmarks/rollouts.py and as the reference the engine is tested against.

Randomness: row (problem id, sample index) draws token i of turn t with
    fold_in(fold_in(fold_in(fold_in(key(seed), problem_hash), sample), t), i)
so any batching, sharding, refill order or resume reproduces a trajectory exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from drift_jax.envs import DEFAULT_FEEDBACK, ChatFormat, Env, Problem, verify
from drift_jax.lm import sampling
from drift_jax.lm.model import ModelConfig, Params
from drift_jax.rollout import engine as engine_lib


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """How episodes are played: turns, tokens per turn, the sampling rule and the feedback message."""

    max_turns: int = 5
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    feedback: str = DEFAULT_FEEDBACK
    system_prompt: str | None = None


def problem_hash(problem_id: str) -> int:
    """A 31-bit integer from a content-hash id (hex), for fold_in."""
    try:
        return int(problem_id[:8], 16) & 0x7FFFFFFF
    except ValueError:
        return int.from_bytes(problem_id.encode()[:4].ljust(4, b"\0"), "big") & 0x7FFFFFFF


def episode_keys(seed: int, problem_ids: Sequence[str], samples: Sequence[int]) -> jax.Array:
    """Per-row episode keys, from (seed, problem id, sample index) only; the sampler folds in the turn
    and the token index."""
    base = jax.random.key(seed)
    h = jnp.asarray([problem_hash(p) for p in problem_ids], jnp.uint32)
    s = jnp.asarray(samples, jnp.uint32)
    return jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(base, a), b))(h, s)


def trajectory_keys(seed: int, problem_ids: Sequence[str], samples: Sequence[int], turn: int) -> jax.Array:
    """Per-row keys of one turn: fold_in(episode key, turn)."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(episode_keys(seed, problem_ids, samples), turn)


def _record(problem: Problem, sample: int, prompt_ids: list[int]) -> dict[str, Any]:
    return {
        "problem_id": problem.id, "sample": int(sample), "task": problem.task, "question": problem.question,
        "gold": problem.answer, "prompt_ids": prompt_ids, "turns": [], "solved_turn": 0,
    }


def _turn(chat: ChatFormat, problem: Problem, response_ids, logprobs, finished: bool, last: bool,
          feedback_ids: list[int]) -> tuple[dict[str, Any], bool]:
    """A turn's record and whether the episode is over (solved, or its last turn)."""
    text = chat.decode(response_ids)
    verdict = verify(problem, text)
    done = bool(verdict.correct) or last
    return {
        "response_ids": list(response_ids),
        "logprobs": np.asarray(logprobs, np.float32).tolist(),
        "text": text,
        "answer": verdict.parsed_answer,
        "format_ok": bool(verdict.format_ok),
        "reward": 1.0 if verdict.correct else 0.0,
        "truncated": not finished,
        "feedback_ids": [] if done else list(feedback_ids),
    }, done


def run_episodes(
    params: Params,
    model_config: ModelConfig,
    chat: ChatFormat,
    problems: Sequence[Problem],
    samples: Sequence[int],
    config: EpisodeConfig,
    *,
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    pad_rows_to: int = 0,
    engine: engine_lib.EngineConfig | None = None,
    on_record: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Plays one episode per (problems[i], samples[i]) on the rollout engine; returns one trajectory
    record per row, in order (`on_record(i, record)` is called as soon as episode i ends).

    A record: problem_id, sample, task, question, gold, prompt_ids, and per turn response_ids (with the
    end-of-turn token when the model emitted it), logprobs (the policy's own), text, answer (parsed),
    format_ok, reward, truncated (hit max_new_tokens without ending the turn), feedback_ids (the
    tokens that followed this turn in the cache; empty for the last); plus solved_turn (0: never).
    `engine` fixes the shapes (default: `pad_rows_to` rows, else one row per episode up to 256).
    """
    if len(problems) != len(samples):
        raise ValueError("one sample index per problem row")
    if not problems:
        return []
    engine = engine or engine_lib.EngineConfig(rows=pad_rows_to or min(len(problems), 256))
    env = Env(config.max_turns, config.feedback, config.system_prompt)
    prompts = [chat.prompt_ids(m) for m in env.reset(problems)]
    feedback_ids = chat.feedback_ids(config.feedback)
    keys = np.asarray(jax.random.key_data(episode_keys(seed, [p.id for p in problems], samples)))
    budgets = (config.max_new_tokens,) * config.max_turns
    jobs = [engine_lib.Job(tuple(prompts[i]), keys[i], budgets, p.id) for i, p in enumerate(problems)]
    records = [_record(p, s, prompts[i]) for i, (p, s) in enumerate(zip(problems, samples))]

    def on_turn(i: int, turn: int, out: engine_lib.TurnOut) -> bool:
        rec, done = _turn(chat, problems[i], out.response_ids, out.logprobs, out.finished,
                          turn >= config.max_turns, feedback_ids)
        records[i]["turns"].append(rec)
        if rec["reward"] > 0 and not records[i]["solved_turn"]:
            records[i]["solved_turn"] = turn
        if done and on_record is not None:
            on_record(i, records[i])
        return done

    engine_lib.run(
        sampling.rollout_params(params, model_config, mesh), model_config, jobs, on_turn, engine,
        rule=_rule(config, chat), forced=[chat.end_of_turn_id] + list(feedback_ids),
        max_new_tokens=config.max_new_tokens, mesh=mesh,
    )
    return records


def _rule(config: EpisodeConfig, chat: ChatFormat) -> sampling.Sampling:
    return sampling.Sampling(
        float(config.temperature), int(config.top_k), float(config.top_p), tuple(chat.stop_token_ids), chat.pad_id
    )


def run_episodes_static(
    params: Params,
    model_config: ModelConfig,
    chat: ChatFormat,
    problems: Sequence[Problem],
    samples: Sequence[int],
    config: EpisodeConfig,
    *,
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    pad_rows_to: int = 0,
    budgets: Sequence[Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """The previous engine, as `run_episodes` but all rows of the batch at once with a barrier at every
    turn: each turn decodes until its longest row ends. `budgets[i][t]`: new tokens allowed in turn
    t+1 of row i (default max_new_tokens)."""
    if len(problems) != len(samples):
        raise ValueError("one sample index per problem row")
    n = len(problems)
    if n == 0:
        return []
    params = sampling.rollout_params(params, model_config, mesh)
    prompts = [chat.prompt_ids(m) for m in Env(config.max_turns, config.feedback, config.system_prompt).reset(problems)]
    feedback_ids = chat.feedback_ids(config.feedback)
    # Inactive padding rows keep every batch one shape (one compile) and divide the data axes.
    tokens, lengths = sampling.pad_batch(prompts, mesh=mesh, min_rows=pad_rows_to, pad_id=chat.pad_id)
    rows = len(lengths)
    # Size the cache for the longest possible episode: no row can ever overflow it.
    longest = max(len(p) for p in prompts) + config.max_turns * config.max_new_tokens
    max_length = sampling.round_up(longest + (config.max_turns - 1) * (len(feedback_ids) + 1), sampling.BUCKET)
    state, _ = sampling.prefill(params, model_config, tokens, lengths, max_length=max_length, mesh=mesh)
    keys = episode_keys(seed, [p.id for p in problems] + [""] * (rows - n), list(samples) + [0] * (rows - n))
    budget_BxU = np.full((rows, config.max_turns), config.max_new_tokens, np.int32)
    if budgets is not None:
        budget_BxU[:n] = np.asarray(budgets, np.int32)
    records = [_record(p, s, prompts[i]) for i, (p, s) in enumerate(zip(problems, samples))]
    active = np.arange(rows) < n
    for turn in range(1, config.max_turns + 1):
        state, out = sampling.decode(
            params, model_config, state, keys, max_new_tokens=config.max_new_tokens, sampling=_rule(config, chat),
            active_B=active, turn=turn, budget_B=budget_BxU[:, turn - 1], mesh=mesh,
        )
        out = jax.device_get(out)
        if out.truncated_B[active].any():  # cannot happen with the sizing above; never hide it
            raise RuntimeError("KV cache overflow in run_episodes: the cache sizing is wrong")
        ext = np.full((rows, len(feedback_ids) + 1), chat.pad_id, np.int32)
        going_on = np.zeros(rows, np.int32)
        for r in np.flatnonzero(active):
            num = out.num_tokens_B[r]
            rec, done = _turn(chat, problems[r], out.tokens_BxN[r, :num].tolist(), out.logprobs_BxN[r, :num],
                              bool(out.finished_B[r]), turn >= config.max_turns, feedback_ids)
            records[r]["turns"].append(rec)
            if rec["reward"] > 0 and not records[r]["solved_turn"]:
                records[r]["solved_turn"] = turn
            active[r] = not done
            # A turn cut at its budget has no end-of-turn token yet: close it as the template would
            # (supervision.trajectory_tokens rebuilds exactly this layout).
            row_ids = ([chat.end_of_turn_id] if rec["truncated"] else []) + list(feedback_ids)
            ext[r, : len(row_ids)] = row_ids
            going_on[r] = 0 if done else len(row_ids)
        if not active.any():
            break
        state, overflow = sampling.extend(params, model_config, state, ext, going_on, mesh=mesh)
        if np.asarray(overflow).any():
            raise RuntimeError("KV cache overflow while appending feedback: the cache sizing is wrong")
    return records
