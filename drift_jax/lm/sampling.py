"""The sampler: the model's own forward with a KV cache, in jitted chunks of decode steps, rows under host control.

One forward: a decode step is `model.forward` on one token per row (the layer code training runs), so the
sampler's log-probabilities are the training path's. Three jitted, state-donating calls, with shapes
fixed by the caller (rows B, cache length S, prompt buckets), so a stage compiles each once:
  * `extend(params, config, state, tokens_BxT, num_new_B)` appends num_new_B[b] tokens to row b;
    `prefill` is an extend of an empty state.
  * `refill(...)` prefills a few prompts into a small scratch cache and copies each prompt's rows into
    the destination rows of the big state: the K samples of a problem share one prefill;
    `copy_prompt` starts a row from another row's prompt (samples that start later). `take_rows`
    gathers rows into a narrower state.
  * `decode_chunk(params, config, state, rows, ...)` runs up to N steps. Row b is a small state machine
    (`Rows`): it samples turn t up to a stop token or its budget, then (if t is not its last turn)
    feeds the forced tokens (end of turn when it was cut, then the feedback) and samples turn t+1, with
    no host round trip. The host reads the `Chunk`, verifies ended turns, releases and refills rows.
Token i of turn t of a row is drawn with fold_in(fold_in(row key, t), i), so a row's tokens depend on
neither the other rows, nor the batch size, nor the mesh. Log-probabilities are the model's own
(log_softmax of the raw logits), independent of temperature / top-k / top-p.
`decode` and `generate` are the one-turn convenience API over the same chunk.
The state these calls take and return (`DecodeState`), its layout and `rollout_params` are in `decode_state`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from drift_jax.lm import model, sharding
from drift_jax.lm.decode_state import RULES, DecodeState, _in_layout, _rows, _state_shardings, init_state
from drift_jax.lm.model import Cache, ModelConfig, Params, forward, init_cache
from drift_jax.lm.sample import Sampling, sample_tokens

BUCKET = 16  # extend lengths are rounded up to this to limit recompiles
TRACES: collections.Counter = collections.Counter()  # programs traced (= compiled) per kind, for tests


@flax.struct.dataclass
class Rows:
    """Per-row control of the decode loop; the host owns it between chunks (numpy or device arrays)."""

    key_Bx2: jax.Array  # uint32 key data of the row's episode (threefry)
    turn_B: jax.Array  # int32, 1-based turn being sampled (or to be sampled after the forced tokens)
    last_turn_B: jax.Array  # int32: the row stops when this turn ends
    index_B: jax.Array  # int32, tokens sampled in this turn so far
    forced_B: jax.Array  # int32, next position in the forced sequence; >= its length: none pending
    active_B: jax.Array  # bool
    budget_BxU: jax.Array  # int32, new tokens allowed in turn u+1


@flax.struct.dataclass
class Chunk:
    """One chunk's output. Step j of row b sampled tokens_BxN[b, j] of turn turns_BxN[b, j] (0: no token)."""

    tokens_BxN: jax.Array  # int32, -1 where nothing was sampled
    logprobs_BxN: jax.Array  # float32
    turns_BxN: jax.Array  # int32
    ends_BxN: jax.Array  # int32: 1 the turn ended with a stop token, 2 it hit its budget, 0 it goes on
    overflow_B: jax.Array  # bool: the row's cache filled up while it was active (row stopped)
    steps: jax.Array  # int32, steps run (< N when every row stopped early)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static part of a decode chunk: the sampling rule, the forced sequence and the chunk length."""

    sampling: Sampling
    forced: tuple[int, ...] = (0,)  # end-of-turn token, then the feedback tokens
    steps: int = 32


# ----------------------------------------------------------------------------- extend, refill


def _extend(params, config, state: DecodeState, tokens_BxT, num_new_B):
    cache = state.cache
    overflow_B = cache.lengths_B + num_new_B > cache.max_length
    last_B = jnp.clip(num_new_B - 1, 0, tokens_BxT.shape[1] - 1)
    last_Bx1xV, cache = forward(params, config, tokens_BxT, cache=cache, num_new_B=num_new_B, logits_at_B=last_B)
    logits_BxV = jnp.where((num_new_B > 0)[:, None], last_Bx1xV[:, 0], state.logits_BxV)
    return DecodeState(cache, logits_BxV), overflow_B


@functools.lru_cache(maxsize=64)
def _extend_fn(config: ModelConfig, mesh: Mesh | None, batch: int, max_length: int):
    state_sh = _state_shardings(mesh, config, batch, max_length)
    out = None if mesh is None else (state_sh, _rows(mesh, (batch,)))
    return jax.jit(functools.partial(_extend, config=config), out_shardings=out, donate_argnames="state")


def extend(
    params: Params, config: ModelConfig, state: DecodeState, tokens_BxT, num_new_B, *, mesh: Mesh | None = None,
) -> tuple[DecodeState, jax.Array]:
    """Appends tokens_BxT[b, :num_new_B[b]] to row b (0: untouched) and refreshes those rows' logits.

    Donates `state`. Returns (state, overflow_B): overflow_B[b] is True when row b did not fit in the
    cache (its tail was dropped); the caller must treat such rows as truncated.
    """
    b, s = state.cache.lengths_B.shape[0], state.cache.max_length
    tokens_BxT = np.asarray(tokens_BxT, np.int32)
    tokens_BxT = np.pad(tokens_BxT, ((0, 0), (0, -tokens_BxT.shape[1] % BUCKET)))
    with sharding.use_rules(RULES):
        tokens_BxT = sharding.put(tokens_BxT, mesh, ("batch", None))
        num_new_B = sharding.put(np.asarray(num_new_B, np.int32), mesh, ("batch",))
    with _in_layout(mesh):
        return _extend_fn(config, mesh, b, s)(params, state=state, tokens_BxT=tokens_BxT, num_new_B=num_new_B)


def prefill(
    params: Params, config: ModelConfig, tokens_BxT, lengths_B, *, max_length: int, mesh: Mesh | None = None,
) -> tuple[DecodeState, jax.Array]:
    """A ragged batch (right-padded tokens, per-row lengths) into a fresh cache of `max_length`."""
    b = np.shape(tokens_BxT)[0]
    rows = np.arange(b, dtype=np.int32)
    state = init_state(config, b, max_length, mesh=mesh)
    return refill(params, config, state, tokens_BxT, lengths_B, rows[:, None], mesh=mesh), jnp.asarray(
        np.asarray(lengths_B) > max_length)


def _refill(params, config, state: DecodeState, tokens_PxT, lengths_P, dst_PxK):
    """Prefills P prompts over their own T positions (not over S mostly-empty slots), then copies
    prompt p's cache rows into rows dst_PxK[p] of the state (entries >= B: none)."""
    TRACES["refill"] += 1
    p, t = tokens_PxT.shape
    s = state.cache.max_length
    scratch = init_cache(config, p, t, state.cache.k_LxBxSxKxH.dtype)
    last_P = jnp.clip(lengths_P - 1, 0, t - 1)
    logits_Px1xV, scratch = forward(params, config, tokens_PxT, cache=scratch, num_new_B=lengths_P, logits_at_B=last_P)
    k = dst_PxK.shape[1]
    src_M = jnp.repeat(jnp.arange(p), k)
    dst_M = dst_PxK.reshape(-1)
    n = min(t, s)
    c = state.cache
    k_cache = c.k_LxBxSxKxH.at[:, dst_M, :n].set(scratch.k_LxBxSxKxH[:, src_M, :n], mode="drop")
    v_cache = c.v_LxBxSxKxH.at[:, dst_M, :n].set(scratch.v_LxBxSxKxH[:, src_M, :n], mode="drop")
    lengths_B = c.lengths_B.at[dst_M].set(jnp.minimum(lengths_P[src_M], s), mode="drop")
    logits_BxV = state.logits_BxV.at[dst_M].set(logits_Px1xV[src_M, 0], mode="drop")
    return DecodeState(Cache(k_cache, v_cache, lengths_B), logits_BxV)


@functools.lru_cache(maxsize=64)
def _refill_fn(config: ModelConfig, mesh: Mesh | None, batch: int, max_length: int):
    out = _state_shardings(mesh, config, batch, max_length)
    return jax.jit(functools.partial(_refill, config=config), out_shardings=out, donate_argnames="state")


def refill(
    params: Params, config: ModelConfig, state: DecodeState, tokens_PxT, lengths_P, dst_PxK, *,
    mesh: Mesh | None = None,
) -> DecodeState:
    """Prefills prompt p (tokens_PxT[p, :lengths_P[p]]) into every row dst_PxK[p, :] (>= B: unused).
    T is the caller's prompt bucket: one compile per bucket. Donates `state`."""
    b, s = state.cache.lengths_B.shape[0], state.cache.max_length
    with _in_layout(mesh):
        return _refill_fn(config, mesh, b, s)(
            params, state=state, tokens_PxT=jnp.asarray(tokens_PxT, jnp.int32),
            lengths_P=jnp.asarray(lengths_P, jnp.int32), dst_PxK=jnp.asarray(dst_PxK, jnp.int32),
        )


def _copy_prompt(state: DecodeState, src, dst, logits_V, length, *, n: int) -> DecodeState:
    c = state.cache
    # A gather and a scatter over rows (as `_refill`'s), which a row-sharded cache partitions locally.
    k = c.k_LxBxSxKxH.at[:, dst[None], :n].set(c.k_LxBxSxKxH[:, src[None], :n])
    v = c.v_LxBxSxKxH.at[:, dst[None], :n].set(c.v_LxBxSxKxH[:, src[None], :n])
    cache = Cache(k, v, c.lengths_B.at[dst].set(length))
    return DecodeState(cache, state.logits_BxV.at[dst].set(logits_V))


@functools.lru_cache(maxsize=64)
def _copy_fn(config: ModelConfig, mesh: Mesh | None, batch: int, max_length: int, n: int):
    out = _state_shardings(mesh, config, batch, max_length)
    return jax.jit(functools.partial(_copy_prompt, n=n), out_shardings=out, donate_argnames="state")


def copy_prompt(state: DecodeState, src: int, dst: int, logits_V: jax.Array, length: int, *, n: int,
                config: ModelConfig, mesh: Mesh | None = None) -> DecodeState:
    """Row dst starts from row src's first `length` cache positions (a prompt it was prefilled with; n >=
    length, static: the prompt bucket) and the prompt's next-token logits (kept from its prefill).
    Donates `state`."""
    b, s = state.cache.lengths_B.shape[0], state.cache.max_length
    with _in_layout(mesh):
        return _copy_fn(config, mesh, b, s, min(n, s))(state, jnp.int32(src), jnp.int32(dst), logits_V, jnp.int32(length))


def _take_rows(state: DecodeState, src_W) -> DecodeState:
    c = state.cache
    cache = Cache(c.k_LxBxSxKxH[:, src_W], c.v_LxBxSxKxH[:, src_W], c.lengths_B[src_W])
    return DecodeState(cache, state.logits_BxV[src_W])


@functools.lru_cache(maxsize=64)
def _take_fn(config: ModelConfig, mesh: Mesh | None, width: int, max_length: int):
    return jax.jit(_take_rows, out_shardings=_state_shardings(mesh, config, width, max_length))


def take_rows(state: DecodeState, src_W, *, config: ModelConfig, mesh: Mesh | None = None) -> DecodeState:
    """A state of W rows: row w is row src_W[w] of `state` (the engine's drain moves its busy rows into
    a narrower state)."""
    src_W = np.asarray(src_W, np.int32)
    with _in_layout(mesh):
        return _take_fn(config, mesh, len(src_W), state.cache.max_length)(state, jnp.asarray(src_W))


# ----------------------------------------------------------------------------- decode


def _platform(mesh: Mesh | None) -> str:
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def _decode_chunk(params, config: ModelConfig, state: DecodeState, rows: Rows, *, plan: Plan, per_layer: bool):
    TRACES["decode"] += 1  # at trace time: one per compiled program
    b, n = rows.turn_B.shape[0], plan.steps
    s = state.cache.max_length
    if per_layer:  # else XLA:CPU copies every layer's weights and cache on every step (see model.LayerCaches)
        params, cache = model.per_layer(params, state.cache)
        state = DecodeState(cache, state.logits_BxV)
    rule = plan.sampling
    stops = jnp.asarray(rule.stop_tokens or (-1,), jnp.int32)
    forced_F = jnp.asarray(plan.forced, jnp.int32)
    num_forced = len(plan.forced)
    episode_keys = jax.random.wrap_key_data(rows.key_Bx2)
    out = Chunk(
        tokens_BxN=jnp.full((b, n), -1, jnp.int32),
        logprobs_BxN=jnp.zeros((b, n), jnp.float32),
        turns_BxN=jnp.zeros((b, n), jnp.int32),
        ends_BxN=jnp.zeros((b, n), jnp.int32),
        overflow_B=jnp.zeros((b,), bool),
        steps=jnp.int32(0),
    )

    def cond(carry):
        i, _, r, _ = carry
        return (i < n) & jnp.any(r.active_B)

    def body(carry):
        i, st, r, out = carry
        room_B = st.cache.lengths_B < s
        overflow_B = r.active_B & ~room_B
        live_B = r.active_B & room_B
        forcing_B = live_B & (r.forced_B < num_forced)
        sampling_B = live_B & ~forcing_B
        turn_keys = jax.vmap(jax.random.fold_in)(episode_keys, r.turn_B)
        step_keys = jax.vmap(jax.random.fold_in)(turn_keys, r.index_B)
        sampled_B = sample_tokens(st.logits_BxV, step_keys, rule)
        logit_B = jnp.take_along_axis(st.logits_BxV, sampled_B[:, None], axis=1)[:, 0]
        logp_B = logit_B - jax.nn.logsumexp(st.logits_BxV, axis=-1)
        tok_B = jnp.where(forcing_B, forced_F[jnp.clip(r.forced_B, 0, num_forced - 1)], sampled_B)
        # Every token, the stop token included, goes into the cache: the next turn extends it.
        logits_Bx1xV, cache = forward(params, config, tok_B[:, None], cache=st.cache, num_new_B=live_B.astype(jnp.int32))
        st = DecodeState(cache, jnp.where(live_B[:, None], logits_Bx1xV[:, 0], st.logits_BxV))
        index_B = r.index_B + sampling_B
        budget_B = jnp.take_along_axis(r.budget_BxU, jnp.clip(r.turn_B - 1, 0, r.budget_BxU.shape[1] - 1)[:, None], 1)[:, 0]
        stopped_B = sampling_B & jnp.isin(sampled_B, stops)
        cut_B = sampling_B & ~stopped_B & (index_B >= budget_B)
        ended_B = stopped_B | cut_B
        last_B = r.turn_B >= r.last_turn_B
        next_B = ended_B & ~last_B
        r = Rows(
            key_Bx2=r.key_Bx2,
            turn_B=r.turn_B + next_B,
            last_turn_B=r.last_turn_B,
            index_B=jnp.where(ended_B, 0, index_B),
            forced_B=jnp.where(forcing_B, r.forced_B + 1, jnp.where(next_B, jnp.where(cut_B, 0, 1), r.forced_B)),
            active_B=live_B & ~(ended_B & last_B),
            budget_BxU=r.budget_BxU,
        )
        col = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None], (0, i))
        out = Chunk(
            tokens_BxN=col(out.tokens_BxN, jnp.where(sampling_B, sampled_B, -1)),
            logprobs_BxN=col(out.logprobs_BxN, jnp.where(sampling_B, logp_B, 0.0)),
            turns_BxN=col(out.turns_BxN, jnp.where(sampling_B, r.turn_B - next_B, 0)),
            ends_BxN=col(out.ends_BxN, stopped_B + 2 * cut_B),
            overflow_B=out.overflow_B | overflow_B,
            steps=i + 1,
        )
        return i + 1, st, r, out

    _, state, rows, out = jax.lax.while_loop(cond, body, (jnp.int32(0), state, rows, out))
    if per_layer:
        state = DecodeState(model.stacked(state.cache), state.logits_BxV)
    return state, rows, out


@functools.lru_cache(maxsize=64)
def _decode_fn(config: ModelConfig, mesh: Mesh | None, batch: int, max_length: int, turns: int, plan: Plan,
               per_layer: bool | None = None):
    """The jitted chunk. per_layer (default: on CPU) runs the loop on `model.per_layer` params and cache,
    made once per chunk; elsewhere (TPU) it runs on the stacked ones, the program the preflight measures
    (a per-layer copy would hold the weights and the cache twice in HBM)."""
    per_layer = _platform(mesh) == "cpu" if per_layer is None else per_layer
    fn = functools.partial(_decode_chunk, config=config, plan=plan, per_layer=per_layer)
    out = None
    if mesh is not None:
        rows = lambda *shape: _rows(mesh, shape)
        b, n = batch, plan.steps
        row_sh = Rows(rows(b, 2), rows(b), rows(b), rows(b), rows(b), rows(b), rows(b, turns))
        chunk_sh = Chunk(rows(b, n), rows(b, n), rows(b, n), rows(b, n), rows(b), rows())
        out = (_state_shardings(mesh, config, batch, max_length), row_sh, chunk_sh)
    return jax.jit(fn, out_shardings=out, donate_argnames=("state", "rows"))


def decode_chunk(
    params: Params, config: ModelConfig, state: DecodeState, rows: Rows, *, plan: Plan, mesh: Mesh | None = None,
) -> tuple[DecodeState, Rows, Chunk]:
    """Up to plan.steps decode steps (fewer when every row stops); donates `state` and `rows`."""
    b, s = state.cache.lengths_B.shape[0], state.cache.max_length
    if mesh is not None:
        rows = jax.tree.map(lambda x: jax.device_put(x, _rows(mesh, np.shape(x))), rows)
    with _in_layout(mesh):
        fn = _decode_fn(config, mesh, b, s, rows.budget_BxU.shape[1], plan)
        return fn(params, state=state, rows=rows)


def new_rows(keys_B: jax.Array, budget_BxU, *, turn=1, last_turn=None, active_B=None) -> Rows:
    """Host-side `Rows` for rows that start sampling `turn` now; keys_B are the episodes' keys."""
    key_Bx2 = np.array(jax.random.key_data(keys_B), np.uint32)
    b = key_Bx2.shape[0]
    budget_BxU = np.array(np.broadcast_to(budget_BxU, (b, np.shape(budget_BxU)[-1])), np.int32)
    full = lambda v: np.array(np.broadcast_to(np.asarray(v, np.int32), (b,)))
    return Rows(
        key_Bx2=key_Bx2, turn_B=full(turn), last_turn_B=full(turn if last_turn is None else last_turn),
        index_B=np.zeros(b, np.int32), forced_B=np.full(b, NONE_FORCED, np.int32),
        active_B=np.ones(b, bool) if active_B is None else np.array(active_B, bool), budget_BxU=budget_BxU,
    )


NONE_FORCED = 1 << 20  # Rows.forced_B of a row with no forced tokens pending


# ----------------------------------------------------------------------------- one turn: decode, generate


@flax.struct.dataclass
class Decoded:
    """One turn's output. Row b's tokens are tokens_BxN[b, :num_tokens_B[b]]."""

    tokens_BxN: jax.Array  # int32, pad_id after a row stopped
    logprobs_BxN: jax.Array  # float32, 0 after a row stopped
    num_tokens_B: jax.Array  # int32
    finished_B: jax.Array  # bool: ended with a stop token
    truncated_B: jax.Array  # bool: the cache filled up before a stop token or the budget


def decode(
    params: Params, config: ModelConfig, state: DecodeState, keys_B: jax.Array, *, max_new_tokens: int,
    sampling: Sampling = Sampling(), active_B=None, turn: int = 1, budget_B=None, mesh: Mesh | None = None,
) -> tuple[DecodeState, Decoded]:
    """Samples turn `turn` of every active row: up to a stop token, `budget_B` (default max_new_tokens)
    tokens, or a full cache (`truncated_B`); one chunk of max_new_tokens steps. Donates `state`."""
    b = state.cache.lengths_B.shape[0]
    budget = max_new_tokens if budget_B is None else np.minimum(np.asarray(budget_B), max_new_tokens)
    rows = new_rows(keys_B, np.broadcast_to(budget, (b,))[:, None], turn=turn, active_B=active_B)
    plan = Plan(sampling, steps=max_new_tokens)
    state, _, chunk = decode_chunk(params, config, state, rows, plan=plan, mesh=mesh)
    emitted = chunk.tokens_BxN >= 0
    return state, Decoded(
        tokens_BxN=jnp.where(emitted, chunk.tokens_BxN, sampling.pad_id),
        logprobs_BxN=chunk.logprobs_BxN,
        num_tokens_B=emitted.sum(1, dtype=jnp.int32),
        finished_B=(chunk.ends_BxN == 1).any(1),
        truncated_B=chunk.overflow_B,
    )


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@functools.partial(jax.jit, static_argnames="num_rows")
def row_keys(key: jax.Array, num_rows: int) -> jax.Array:
    """Row b's key is fold_in(key, b): the same prompt at the same index samples the same way."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(num_rows))
