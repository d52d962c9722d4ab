"""The rollout engine: continuous batching of multi-turn episodes over the sampler's fixed-shape decode chunks.

B rows decode together in jitted chunks of N steps (`sampling.decode_chunk`). A row plays its episode's
turns on the device without a barrier: after a turn ends it feeds the end-of-turn and feedback tokens
and samples the next turn at once. Between chunks the host reads the chunk, hands every ended turn to
the caller's `verify` (which says whether the episode is over: solved, or out of turns), releases the
rows of finished episodes (tokens a row sampled past its episode's end are dropped) and refills them
with the next episodes: one prefill per prompt, copied into the rows of its K samples, also of samples
that start later while a row still holds the prompt. Once no episode
is left to start (the stage's drain), the busy rows are moved into a smaller state (rows/2, rows/4, ...:
`EngineConfig.row_buckets` widths) so that idle rows are not computed.
Shapes come from `EngineConfig`, not from the episodes: the decode chunk compiles once per row width, the
prefill once per prompt bucket. A row's tokens depend only on its episode's key, its history and the
token index (see `sampling`), so the batch size, the order of refills, moving rows and the mesh change
nothing.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from drift_jax.lm import decode_state, generate, sampling
from drift_jax.lm.model import ModelConfig, Params


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """The engine's fixed shapes: rows in flight, steps per chunk, prompt buckets, cache length."""

    rows: int = 256
    chunk_steps: int = 32
    prompt_buckets: tuple[int, ...] = (64, 128, 256, 512)
    # 0: the longest episode from the largest bucket the run's prompts use fits (bucket + turns x
    # (max_new + forced)): fixed for a stage, at most one cache length per bucket across stages.
    cache_length: int = 0
    prefill_rows: int = 4  # prompts prefilled together
    # Row widths of the drain: rows, rows/2, ... (row_buckets of them; each compiles the decode chunk).
    row_buckets: int = 3


@dataclasses.dataclass(frozen=True)
class Job:
    """One episode to play: its prompt, its key (jax key data, uint32[2]), a token budget per turn, and
    the prompt group (episodes of one group with the same prompt share its prefill)."""

    prompt_ids: tuple[int, ...]
    key: np.ndarray
    budgets: tuple[int, ...]
    group: object = None


@dataclasses.dataclass
class TurnOut:
    response_ids: list[int]
    logprobs: list[float]
    finished: bool  # ended with a stop token (else cut at its budget)


@dataclasses.dataclass
class Stats:
    chunks: int = 0
    row_steps: int = 0  # rows x decode steps computed (the rows of the chunk's width)
    sampled: int = 0  # tokens sampled into the episodes' turns (speculative tokens dropped are not)
    forced: int = 0  # end-of-turn and feedback tokens fed between turns
    prefills: int = 0
    prompt_copies: int = 0  # rows started from a busy row's prompt (no prefill)
    narrowed: int = 0  # times the drain moved the busy rows into a narrower state
    steady_row_steps: int = 0  # the same two while episodes were still waiting for a row (no drain)
    steady_sampled: int = 0


# verify(job index, turn (1-based), the turn) -> True when the episode is over.
Verify = Callable[[int, int, TurnOut], bool]


def cache_length(cfg: EngineConfig, max_turns: int, max_new_tokens: int, num_forced: int,
                 bucket: int | None = None) -> int:
    """The cache length a run uses: cfg.cache_length, else the longest episode from prompt `bucket`
    (default: the largest) fits."""
    if cfg.cache_length:
        return cfg.cache_length
    bucket = max(cfg.prompt_buckets) if bucket is None else bucket
    return sampling.round_up(bucket + max_turns * max_new_tokens + (max_turns - 1) * num_forced, sampling.BUCKET)


def run(
    params: Params,
    config: ModelConfig,
    jobs: Sequence[Job],
    verify: Verify,
    cfg: EngineConfig,
    *,
    rule: sampling.Sampling,
    forced: Sequence[int],
    max_new_tokens: int,
    mesh: jax.sharding.Mesh | None = None,
) -> Stats:
    """Plays every job to its end, calling `verify` on each ended turn in the order turns end.
    `forced`: the end-of-turn token then the feedback tokens (fed before every turn after the first;
    the end-of-turn token only when the previous turn was cut at its budget). `params` must already be
    in the sampler's layout (`decode_state.rollout_params`)."""
    stats = Stats()
    if not jobs:
        return stats
    max_turns = max(len(j.budgets) for j in jobs)
    split = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]  # rows are split this many ways
    b = sampling.round_up(cfg.rows, split)
    buckets = sorted(cfg.prompt_buckets)
    longest = max(len(j.prompt_ids) for j in jobs)
    if longest > buckets[-1]:
        raise ValueError(f"a prompt of {longest} tokens exceeds the largest prompt bucket {buckets[-1]}; "
                         f"add a bucket to the engine config")
    s = cache_length(cfg, max_turns, max_new_tokens, len(forced), next(x for x in buckets if x >= longest))
    for i, j in enumerate(jobs):
        need = len(j.prompt_ids) + sum(j.budgets) + (len(j.budgets) - 1) * len(forced)
        if need > s:
            raise ValueError(f"job {i} may need {need} cache positions; the engine's cache_length is {s}")
    group_size = max(collections.Counter(j.group for j in jobs).values()) if jobs[0].group is not None else 1
    group_size = min(group_size, b)
    plan = sampling.Plan(rule, tuple(int(t) for t in forced), cfg.chunk_steps)

    widths = row_widths(b, cfg.row_buckets, split)
    state = decode_state.init_state(config, b, s, mesh=mesh)
    idle_keys = jax.random.wrap_key_data(np.zeros((b, 2), np.uint32))
    rows = sampling.new_rows(idle_keys, np.ones((b, max_turns), np.int32), active_B=np.zeros(b, bool))
    busy = _Busy(np.full(b, -1), [None] * b, np.zeros(b, np.int32))
    pending = collections.deque(range(len(jobs)))
    prompt_logits: dict = {}  # prompt key -> its next-token logits, while a busy row holds the prompt
    while pending or (busy.job >= 0).any():
        free = np.flatnonzero(busy.job < 0)
        if len(free) and pending:
            groups = _take(jobs, pending, len(free), group_size)
            state = _start(params, config, state, rows, busy, jobs, groups, free, cfg, buckets, mesh, prompt_logits,
                           stats)
        elif not pending:  # the drain: the narrowest width that holds the busy rows
            width = min(w for w in widths if w >= len(busy.job) - len(free))
            if width < len(busy.job):
                state, rows, busy = _narrow(config, state, rows, busy, width, mesh)
                stats.narrowed += 1
        width = len(busy.job)
        state, rows_dev, chunk = sampling.decode_chunk(params, config, state, rows, plan=plan, mesh=mesh)
        rows, chunk = jax.tree.map(np.array, jax.device_get((rows_dev, chunk)))
        stats.chunks += 1
        stats.row_steps += width * int(chunk.steps)
        if chunk.overflow_B.any():
            raise RuntimeError("KV cache overflow in the rollout engine: the cache sizing is wrong")
        kept, forced_tokens = _collect(chunk, rows, busy, jobs, verify, len(forced))
        stats.sampled += kept
        stats.forced += forced_tokens
        if pending:
            stats.steady_row_steps += width * int(chunk.steps)
            stats.steady_sampled += kept
    return stats


@dataclasses.dataclass
class _Busy:
    job: np.ndarray  # job index per row, -1: free
    turn: list  # the TurnOut each busy row is sampling
    turn_number: np.ndarray


def row_widths(rows: int, buckets: int, multiple: int = 1) -> list[int]:
    """The row widths a stage decodes at, widest first: rows, rows/2, ... (multiples of `multiple`,
    the mesh's row split)."""
    return sorted({sampling.round_up(max(rows >> i, 1), multiple) for i in range(max(buckets, 1))}, reverse=True)


def _narrow(config, state, rows: sampling.Rows, busy: _Busy, width: int, mesh):
    """Moves the busy rows (then idle ones up to `width`) into a state of `width` rows."""
    src = np.concatenate([np.flatnonzero(busy.job >= 0), np.flatnonzero(busy.job < 0)])[:width]
    state = sampling.take_rows(state, src, config=config, mesh=mesh)
    rows = jax.tree.map(lambda x: np.asarray(x)[src], rows)
    return state, rows, _Busy(busy.job[src], [busy.turn[i] for i in src], busy.turn_number[src])


def _take(jobs, pending: collections.deque, n: int, group_size: int) -> list[list[int]]:
    """The next <= n pending jobs, cut into runs that share a prompt (<= group_size each)."""
    groups: list[list[int]] = []
    for _ in range(min(n, len(pending))):
        j = pending.popleft()
        last = groups[-1] if groups else None
        if last and len(last) < group_size and jobs[last[0]].group is not None and \
                jobs[last[0]].group == jobs[j].group and jobs[last[0]].prompt_ids == jobs[j].prompt_ids:
            last.append(j)
        else:
            groups.append([j])
    return groups


def _prompt_key(job: Job):
    """Jobs with equal keys (not None) share a prompt's prefill."""
    return None if job.group is None else (job.group, job.prompt_ids)


def _start(params, config, state, rows, busy: _Busy, jobs, groups, free, cfg: EngineConfig, buckets, mesh,
           prompt_logits: dict, stats: Stats):
    """Starts each group's jobs: from a copy of a busy row that holds their prompt (its cache prefix and
    the prompt's logits, kept from its prefill), else from one prefill of the prompt into their rows."""
    b, k = len(busy.job), max(len(g) for g in groups)
    free = list(free)
    holders = {_prompt_key(jobs[busy.job[r]]): r for r in np.flatnonzero(busy.job >= 0)}
    fresh = []
    for g in groups:
        key = _prompt_key(jobs[g[0]])
        if key is None or key not in holders or key not in prompt_logits:
            fresh.append(g)
            continue
        n = len(key[1])
        for j in g:
            r = free.pop(0)
            _assign(rows, busy, jobs, j, r)
            t = next(x for x in buckets if x >= n)
            state = sampling.copy_prompt(state, holders[key], r, prompt_logits[key], n, n=t, config=config, mesh=mesh)
            stats.prompt_copies += 1
    p = cfg.prefill_rows
    for start in range(0, len(fresh), p):
        part = fresh[start : start + p]
        longest = max(len(jobs[g[0]].prompt_ids) for g in part)
        t = next(x for x in buckets if x >= longest)
        tokens = np.zeros((p, t), np.int32)
        lengths = np.ones(p, np.int32)
        dst = np.full((p, max(k, 1)), b, np.int32)
        for i, g in enumerate(part):
            prompt = jobs[g[0]].prompt_ids
            tokens[i, : len(prompt)], lengths[i] = prompt, len(prompt)
            for m, j in enumerate(g):
                dst[i, m] = r = free.pop(0)
                _assign(rows, busy, jobs, j, r)
        state = sampling.refill(params, config, state, tokens, lengths, dst, mesh=mesh)
        stats.prefills += len(part)
        for i, g in enumerate(part):
            if _prompt_key(jobs[g[0]]) is not None:
                prompt_logits[_prompt_key(jobs[g[0]])] = state.logits_BxV[int(dst[i, 0])]
    held = {_prompt_key(jobs[j]) for j in busy.job[busy.job >= 0]}
    for key in [x for x in prompt_logits if x not in held]:
        del prompt_logits[key]
    return state


def _assign(rows: sampling.Rows, busy: _Busy, jobs, j: int, r: int) -> None:
    """Row r starts job j's first turn."""
    job = jobs[j]
    rows.key_Bx2[r] = job.key
    rows.turn_B[r], rows.last_turn_B[r], rows.index_B[r] = 1, len(job.budgets), 0
    rows.forced_B[r], rows.active_B[r] = sampling.NONE_FORCED, True
    rows.budget_BxU[r] = 0
    rows.budget_BxU[r, : len(job.budgets)] = job.budgets
    busy.job[r], busy.turn[r], busy.turn_number[r] = j, TurnOut([], [], False), 1


def _collect(chunk: sampling.Chunk, rows: sampling.Rows, busy: _Busy, jobs, verify: Verify, num_forced: int):
    """Hands each ended turn to `verify`; releases the rows of finished episodes. Returns the sampled
    tokens kept and the forced tokens of the turns that went on."""
    kept = forced = 0
    steps = int(chunk.steps)
    for r in np.flatnonzero(busy.job >= 0):
        sel = chunk.turns_BxN[r, :steps] > 0
        toks, logps, ends = (x[r, :steps][sel] for x in (chunk.tokens_BxN, chunk.logprobs_BxN, chunk.ends_BxN))
        start = 0
        for e in np.flatnonzero(ends):
            turn = busy.turn[r]
            turn.response_ids += toks[start : e + 1].tolist()
            turn.logprobs += logps[start : e + 1].tolist()
            turn.finished = bool(ends[e] == 1)
            kept += e + 1 - start
            start = e + 1
            job = busy.job[r]
            done = verify(int(job), int(busy.turn_number[r]), turn)
            if done or busy.turn_number[r] >= len(jobs[job].budgets):
                busy.job[r], busy.turn[r] = -1, None
                rows.active_B[r] = False  # what it sampled past the episode's end is dropped
                break
            busy.turn_number[r] += 1
            busy.turn[r] = TurnOut([], [], False)
            forced += num_forced - turn.finished
        else:
            busy.turn[r].response_ids += toks[start:].tolist()
            busy.turn[r].logprobs += logps[start:].tolist()
            kept += len(toks) - start
    return kept, forced


def run_static(
    params: Params,
    config: ModelConfig,
    jobs: Sequence[Job],
    verify: Verify,
    rows: int,
    *,
    rule: sampling.Sampling,
    forced: Sequence[int],
    max_new_tokens: int,
    mesh: jax.sharding.Mesh | None = None,
) -> Stats:
    """The previous engine, for comparison: `rows` jobs at a time, every turn a barrier (a turn decodes
    until its longest row ends, then the rows that go on are extended with the forced tokens), the
    cache sized for the batch's longest prompt. Same jobs, same `verify`, same trajectories as `run`."""
    stats = Stats()
    for start in range(0, len(jobs), rows):
        batch = list(range(start, min(start + rows, len(jobs))))
        n, turns = len(batch), max(len(jobs[j].budgets) for j in batch)
        tokens, lengths = generate.pad_batch([jobs[j].prompt_ids for j in batch], mesh=mesh, min_rows=rows)
        b = len(lengths)
        longest = int(lengths.max()) + turns * max_new_tokens + (turns - 1) * len(forced)
        state, _ = sampling.prefill(params, config, tokens, lengths, max_length=sampling.round_up(longest, sampling.BUCKET),
                                    mesh=mesh)
        stats.prefills += n
        keys = jax.random.wrap_key_data(np.stack([jobs[j].key for j in batch] + [np.zeros(2, np.uint32)] * (b - n)))
        budget_BxU = np.zeros((b, turns), np.int32)
        for i, j in enumerate(batch):
            budget_BxU[i, : len(jobs[j].budgets)] = jobs[j].budgets
        active = np.arange(b) < n
        for turn in range(1, turns + 1):
            state, out = sampling.decode(params, config, state, keys, max_new_tokens=max_new_tokens, sampling=rule,
                                         active_B=active, turn=turn, budget_B=budget_BxU[:, turn - 1], mesh=mesh)
            out = jax.device_get(out)
            if out.truncated_B[active].any():
                raise RuntimeError("KV cache overflow in the static engine: the cache sizing is wrong")
            stats.chunks += 1
            stats.row_steps += b * int(out.num_tokens_B.max())
            ext = np.zeros((b, len(forced)), np.int32)
            going_on = np.zeros(b, np.int32)
            for i in np.flatnonzero(active):
                num = int(out.num_tokens_B[i])
                done = verify(batch[i], turn, TurnOut(out.tokens_BxN[i, :num].tolist(),
                                                      out.logprobs_BxN[i, :num].tolist(), bool(out.finished_B[i])))
                stats.sampled += num
                active[i] = not done and turn < len(jobs[batch[i]].budgets)
                # A turn cut at its budget is closed with the end-of-turn token, as the template would.
                row = list(forced) if not out.finished_B[i] else list(forced[1:])
                ext[i, : len(row)], going_on[i] = row, len(row) if active[i] else 0
            if not active.any():
                break
            state, overflow = sampling.extend(params, config, state, ext, going_on, mesh=mesh)
            if np.asarray(overflow).any():
                raise RuntimeError("KV cache overflow while appending feedback: the cache sizing is wrong")
    return stats
