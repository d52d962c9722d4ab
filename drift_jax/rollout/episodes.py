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
from drift_jax.lm import decode_state, sampling
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
    static: bool = False,
) -> list[dict[str, Any]]:
    """Plays one episode per (problems[i], samples[i]) on the rollout engine; returns one trajectory
    record per row, in order (`on_record(i, record)` is called as soon as episode i ends).

    A record: problem_id, sample, task, question, gold, prompt_ids, and per turn response_ids (with the
    end-of-turn token when the model emitted it), logprobs (the policy's own), text, answer (parsed),
    format_ok, reward, truncated (hit max_new_tokens without ending the turn), feedback_ids (the
    tokens that followed this turn in the cache; empty for the last); plus solved_turn (0: never).
    `engine` fixes the shapes (default: `pad_rows_to` rows, else one row per episode up to 256).
    `static=True` plays them on the previous engine (`engine.run_static`: a barrier at every turn).
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

    kw = dict(rule=_rule(config, chat), forced=[chat.end_of_turn_id] + list(feedback_ids),
              max_new_tokens=config.max_new_tokens, mesh=mesh)
    params = decode_state.rollout_params(params, model_config, mesh)
    if static:
        engine_lib.run_static(params, model_config, jobs, on_turn, engine.rows, **kw)
    else:
        engine_lib.run(params, model_config, jobs, on_turn, engine, **kw)
    return records


def _rule(config: EpisodeConfig, chat: ChatFormat) -> sampling.Sampling:
    return sampling.Sampling(
        float(config.temperature), int(config.top_k), float(config.top_p), tuple(chat.stop_token_ids), chat.pad_id
    )
