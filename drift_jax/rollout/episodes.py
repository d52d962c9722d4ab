"""Multi-turn episodes on the sampler: generate, verify, extend the cache with feedback, repeat.

One function, `run_episodes`, serves both the rollouts (K samples per problem at temperature 1) and the
evaluation (greedy), so both see the same template, feedback and token layout. All rows of a batch are in
flight together; rows whose episode ended stay in the cache but are inactive.

Randomness: row (problem id, sample index) draws turn t with
    fold_in(fold_in(fold_in(key(seed), problem_hash), sample), t)
(the sampler folds the token index in on top), so any batching, sharding or resume reproduces a
trajectory exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from drift_jax.envs import DEFAULT_FEEDBACK, ChatFormat, Env, Problem
from drift_jax.lm import sampling
from drift_jax.lm.model import ModelConfig, Params


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


def trajectory_keys(seed: int, problem_ids: Sequence[str], samples: Sequence[int], turn: int) -> jax.Array:
    """Per-row keys for one turn, from (seed, problem id, sample index, turn) only."""
    base = jax.random.key(seed)
    h = jnp.asarray([problem_hash(p) for p in problem_ids], jnp.uint32)
    s = jnp.asarray(samples, jnp.uint32)
    fold = jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, a), b), turn))
    return fold(h, s)


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
) -> list[dict[str, Any]]:
    """Plays one episode per (problems[i], samples[i]); returns one trajectory record per row.

    A record: problem_id, sample, task, question, gold, prompt_ids, and per turn response_ids (with the
    end-of-turn token when the model emitted it), logprobs (the policy's own), text, answer (parsed),
    format_ok, reward, truncated (hit max_new_tokens without ending the turn), feedback_ids (the
    tokens that followed this turn in the cache; empty for the last); plus solved_turn (0: never).
    """
    if len(problems) != len(samples):
        raise ValueError("one sample index per problem row")
    n = len(problems)
    if n == 0:
        return []
    env = Env(config.max_turns, config.feedback, config.system_prompt)
    prompts = [chat.prompt_ids(m) for m in env.reset(problems)]
    feedback_ids = chat.feedback_ids(config.feedback)
    # Inactive padding rows keep every batch one shape (one compile) and divide the data axes.
    tokens, lengths = sampling.pad_batch(prompts, mesh=mesh, min_rows=pad_rows_to, pad_id=chat.pad_id)
    rows = len(lengths)
    # Size the cache for the longest possible episode: no row can ever overflow it.
    longest = max(len(p) for p in prompts) + config.max_turns * config.max_new_tokens
    max_length = sampling.round_up(longest + (config.max_turns - 1) * (len(feedback_ids) + 1), sampling.BUCKET)
    state, _ = sampling.prefill(params, model_config, tokens, lengths, max_length=max_length, mesh=mesh)
    rule = sampling.Sampling(
        float(config.temperature), int(config.top_k), float(config.top_p), tuple(chat.stop_token_ids), chat.pad_id
    )
    ids = [p.id for p in problems] + [""] * (rows - n)
    row_samples = list(samples) + [0] * (rows - n)
    records = [
        {
            "problem_id": p.id, "sample": int(s), "task": p.task, "question": p.question, "gold": p.answer,
            "prompt_ids": prompts[i], "turns": [], "solved_turn": 0,
        }
        for i, (p, s) in enumerate(zip(problems, samples))
    ]
    for turn in range(1, config.max_turns + 1):
        active_rows = env.active
        active = np.zeros(rows, bool)
        active[active_rows] = True
        keys = trajectory_keys(seed, ids, row_samples, turn)
        state, out = sampling.decode(
            params, model_config, state, keys, max_new_tokens=config.max_new_tokens, sampling=rule,
            active_B=active, mesh=mesh,
        )
        out = jax.device_get(out)
        if out.truncated_B[active].any():  # cannot happen with the sizing above; never hide it
            raise RuntimeError("KV cache overflow in run_episodes: the cache sizing is wrong")
        responses = [out.tokens_BxN[r, : out.num_tokens_B[r]].tolist() for r in active_rows]
        texts = [chat.decode(ids_) for ids_ in responses]
        results = env.step(texts)
        for r, ids_, text, res in zip(active_rows, responses, texts, results):
            records[r]["turns"].append({
                "response_ids": ids_,
                "logprobs": out.logprobs_BxN[r, : len(ids_)].astype(np.float32).tolist(),
                "text": text,
                "answer": res.parsed_answer,
                "format_ok": bool(res.format_ok),
                "reward": float(res.reward),
                "truncated": not bool(out.finished_B[r]),
                "feedback_ids": [] if res.done else list(feedback_ids),
            })
            if res.reward > 0 and not records[r]["solved_turn"]:
                records[r]["solved_turn"] = turn
        if env.done:
            break
        # A turn cut at max_new_tokens has no end-of-turn token yet: close it as the template would
        # (sft_examples.trajectory_tokens rebuilds exactly this layout).
        ext = np.full((rows, len(feedback_ids) + 1), chat.pad_id, np.int32)
        going_on = np.zeros(rows, np.int32)
        for r in env.active:
            unclosed = records[r]["turns"][-1]["truncated"]
            row_ids = ([chat.end_of_turn_id] if unclosed else []) + list(feedback_ids)
            ext[r, : len(row_ids)] = row_ids
            going_on[r] = len(row_ids)
        state, overflow = sampling.extend(params, model_config, state, ext, going_on, mesh=mesh)
        if np.asarray(overflow).any():
            raise RuntimeError("KV cache overflow while appending feedback: the cache sizing is wrong")
    return records
