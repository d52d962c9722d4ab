"""Batched multi-turn sampler: ragged prefill, jitted while_loop decode, `extend` for the next turn.

The unit the rollout driver holds is a `DecodeState`: the KV cache (sharded by the one rules table)
plus each row's next-token logits. Three jitted, state-donating calls operate on it:
  * `extend(params, config, state, tokens_BxT, num_new_B)` appends num_new_B[b] tokens to row b
    (0 leaves the row untouched); a prefill is an extend of an empty state (`prefill`).
  * `decode(params, config, state, keys_B, ...)` samples up to `max_new_tokens` per active row in one
    `lax.while_loop`; every sampled token (the stop token included) is written to the cache, so the
    next turn is an `extend` with the feedback message, never a re-prefill of the history.
  * `generate(...)` is the convenience API over lists of token ids.
Row b's i-th token of a decode call is drawn with `fold_in(keys_B[b], i)`, so a row's sample does not
depend on the other rows in the batch or on the mesh. Reported log-probabilities are the model's own
(log_softmax of the raw logits), independent of temperature / top-k / top-p.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from drift_jax.lm import decode_step, sharding
from drift_jax.lm.model import CACHE_LOGICAL, Cache, ModelConfig, Params, forward, init_cache
from drift_jax.lm.sample import Sampling, sample_tokens

BUCKET = 16  # prompt / cache lengths are rounded up to this to limit recompiles


@flax.struct.dataclass
class DecodeState:
    """KV cache plus the float32 logits of the next token of each row (after its last cached token)."""

    cache: Cache
    logits_BxV: jax.Array


STATE_LOGICAL = DecodeState(cache=CACHE_LOGICAL, logits_BxV=("batch", "act_vocab"))


@flax.struct.dataclass
class Decoded:
    """One decode call's output. Row b's tokens are tokens_BxN[b, :num_tokens_B[b]]."""

    tokens_BxN: jax.Array  # int32, pad_id after a row stopped
    logprobs_BxN: jax.Array  # float32, 0 after a row stopped
    num_tokens_B: jax.Array  # int32
    finished_B: jax.Array  # bool: ended with a stop token
    truncated_B: jax.Array  # bool: the cache filled up before a stop token or max_new_tokens


@dataclasses.dataclass
class Generation:
    """Host-side result of `generate`, one entry per prompt."""

    tokens: list[list[int]]  # new tokens up to and including the first stop token
    logprobs: list[list[float]]
    finished: list[bool]  # ended with a stop token
    truncated: list[bool]  # ran out of cache (never silently cut)


# ----------------------------------------------------------------------------- sharding helpers


def _shardings(mesh: Mesh | None, logical, abstract):
    if mesh is None:
        return None
    specs = jax.tree.map(lambda n: PartitionSpec(*n), logical, is_leaf=lambda n: isinstance(n, tuple))
    return sharding.tree_shardings(mesh, specs, abstract)


def _state_shardings(mesh: Mesh | None, config: ModelConfig, batch: int, max_length: int):
    abstract = jax.eval_shape(lambda: _empty_state(config, batch, max_length))
    return _shardings(mesh, STATE_LOGICAL, abstract)


def _empty_state(config: ModelConfig, batch: int, max_length: int) -> DecodeState:
    logits_BxV = jnp.zeros((batch, config.vocab_size), jnp.float32)
    return DecodeState(init_cache(config, batch, max_length), logits_BxV)


def _rows(mesh: Mesh | None, shape) -> jax.sharding.Sharding | None:
    names = ("batch",) + (None,) * (len(shape) - 1)
    return None if mesh is None else sharding.named_sharding(mesh, names, shape)


def _with_mesh(mesh: Mesh | None):
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------- state and extend


def init_state(config: ModelConfig, batch: int, max_length: int, *, mesh: Mesh | None = None) -> DecodeState:
    """An empty state, created directly in its shardings (batch over data/fsdp, kv heads over tensor)."""
    return _init_fn(config, mesh, batch, max_length)()


@functools.lru_cache(maxsize=64)
def _init_fn(config: ModelConfig, mesh: Mesh | None, batch: int, max_length: int):
    out = _state_shardings(mesh, config, batch, max_length)
    return jax.jit(functools.partial(_empty_state, config, batch, max_length), out_shardings=out)


def _extend(params, config, state: DecodeState, tokens_BxT, num_new_B):
    cache = state.cache
    overflow_B = cache.lengths_B + num_new_B > cache.max_length
    last_B = jnp.clip(num_new_B - 1, 0, tokens_BxT.shape[1] - 1)
    last_Bx1xV, cache = forward(
        params, config, tokens_BxT, cache=cache, num_new_B=num_new_B, logits_at_B=last_B
    )
    last_BxV = last_Bx1xV[:, 0]
    logits_BxV = jnp.where((num_new_B > 0)[:, None], last_BxV, state.logits_BxV)
    return DecodeState(cache, logits_BxV), overflow_B


@functools.lru_cache(maxsize=64)
def _extend_fn(config: ModelConfig, mesh: Mesh | None, batch: int, max_length: int):
    state_sh = _state_shardings(mesh, config, batch, max_length)
    out = None if mesh is None else (state_sh, _rows(mesh, (batch,)))
    return jax.jit(
        functools.partial(_extend, config=config), out_shardings=out, donate_argnames="state"
    )


def extend(
    params: Params,
    config: ModelConfig,
    state: DecodeState,
    tokens_BxT: jax.Array | np.ndarray,
    num_new_B: jax.Array | np.ndarray,
    *,
    mesh: Mesh | None = None,
) -> tuple[DecodeState, jax.Array]:
    """Appends tokens_BxT[b, :num_new_B[b]] to row b (0: untouched) and refreshes those rows' logits.

    Donates `state`. Returns (state, overflow_B): overflow_B[b] is True when row b did not fit in the
    cache (its tail was dropped); the caller must treat such rows as truncated.
    """
    b, s = state.cache.lengths_B.shape[0], state.cache.max_length
    tokens_BxT = np.asarray(tokens_BxT, np.int32)
    # Bucket T so turns of different lengths share compiled code.
    tokens_BxT = np.pad(tokens_BxT, ((0, 0), (0, -tokens_BxT.shape[1] % BUCKET)))
    tokens_BxT = sharding.put(tokens_BxT, mesh, ("batch", None))
    num_new_B = sharding.put(np.asarray(num_new_B, np.int32), mesh, ("batch",))
    with _with_mesh(mesh):
        return _extend_fn(config, mesh, b, s)(params, state=state, tokens_BxT=tokens_BxT, num_new_B=num_new_B)


def prefill(
    params: Params,
    config: ModelConfig,
    tokens_BxT: jax.Array | np.ndarray,
    lengths_B: jax.Array | np.ndarray,
    *,
    max_length: int,
    mesh: Mesh | None = None,
) -> tuple[DecodeState, jax.Array]:
    """A ragged batch (right-padded tokens, per-row lengths) into a fresh cache of `max_length`."""
    b, t = np.shape(tokens_BxT)
    prompt_length = round_up(t, BUCKET)  # as extend pads it
    if prompt_length >= max_length:
        state = init_state(config, b, max_length, mesh=mesh)
        return extend(params, config, state, tokens_BxT, lengths_B, mesh=mesh)
    # The prompt attends over its own positions only, not over max_length mostly-empty slots; the cache
    # then grows to max_length with one copy. (No row can overflow: t <= prompt_length < max_length.)
    state = init_state(config, b, prompt_length, mesh=mesh)
    state, overflow_B = extend(params, config, state, tokens_BxT, lengths_B, mesh=mesh)
    with _with_mesh(mesh):
        return _grow_fn(config, mesh, b, prompt_length, max_length)(state), overflow_B


@functools.lru_cache(maxsize=64)
def _grow_fn(config: ModelConfig, mesh: Mesh | None, batch: int, length: int, max_length: int):
    def grow(state: DecodeState) -> DecodeState:
        pad = ((0, 0), (0, 0), (0, max_length - length), (0, 0), (0, 0))
        c = state.cache
        cache = Cache(jnp.pad(c.k_LxBxSxKxH, pad), jnp.pad(c.v_LxBxSxKxH, pad), c.lengths_B)
        return DecodeState(cache, state.logits_BxV)

    return jax.jit(grow, out_shardings=_state_shardings(mesh, config, batch, max_length))


# ----------------------------------------------------------------------------- decode


def _decode(
    params, config: ModelConfig, state: DecodeState, keys_B, active_B, *,
    max_new_tokens: int, sampling: Sampling,
):
    b = active_B.shape[0]
    s = state.cache.max_length
    stops = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)
    full0 = active_B & (state.cache.lengths_B >= s)
    out = Decoded(
        tokens_BxN=jnp.full((b, max_new_tokens), sampling.pad_id, jnp.int32),
        logprobs_BxN=jnp.zeros((b, max_new_tokens), jnp.float32),
        num_tokens_B=jnp.zeros((b,), jnp.int32),
        finished_B=jnp.zeros((b,), bool),
        truncated_B=full0,
    )
    done0 = ~active_B | full0

    def cond(carry):
        i, _, _, done_B = carry
        return (i < max_new_tokens) & ~jnp.all(done_B)

    # Sliced once here, not on every step (see decode_step).
    layers = decode_step.layer_weights(params, config)
    # The loop carries K per layer as [B, K, H, S] and V as [B, K, S, H]: one transpose in and out per
    # call instead of a multiply-reduce over the [B, S, K, H] layout on every step (~3x slower attention).
    kc, vc = state.cache.k_LxBxSxKxH, state.cache.v_LxBxSxKxH
    kv0 = [(jnp.transpose(kc[i], (0, 2, 3, 1)), jnp.swapaxes(vc[i], 1, 2)) for i in range(config.num_layers)]

    def body(carry):
        i, (kv, lengths_B, logits_BxV), out, done_B = carry
        alive_B = ~done_B
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, i)
        tok_B = sample_tokens(logits_BxV, step_keys, sampling)
        logit_B = jnp.take_along_axis(logits_BxV, tok_B[:, None], axis=1)[:, 0]
        logp_B = logit_B - jax.nn.logsumexp(logits_BxV, axis=-1)  # no [B, V] log_softmax
        tok_B = jnp.where(alive_B, tok_B, sampling.pad_id)
        logp_B = jnp.where(alive_B, logp_B, 0.0)
        # Every emitted token, the stop token included, goes into the cache for the next turn.
        alive_int_B = alive_B.astype(jnp.int32)
        logits_BxV_new, kv = decode_step.step_logits(params, layers, config, tok_B, kv, lengths_B, alive_int_B)
        lengths_B = jnp.minimum(lengths_B + alive_B, s)
        logits_BxV = jnp.where(alive_B[:, None], logits_BxV_new, logits_BxV)
        num_B = out.num_tokens_B + alive_B
        stopped_B = alive_B & jnp.isin(tok_B, stops)
        ended_B = stopped_B | (num_B >= max_new_tokens)
        full_B = alive_B & ~ended_B & (lengths_B >= s)
        out = Decoded(
            tokens_BxN=jax.lax.dynamic_update_slice(out.tokens_BxN, tok_B[:, None], (0, i)),
            logprobs_BxN=jax.lax.dynamic_update_slice(out.logprobs_BxN, logp_B[:, None], (0, i)),
            num_tokens_B=num_B,
            finished_B=out.finished_B | stopped_B,
            truncated_B=out.truncated_B | full_B,
        )
        return i + 1, (kv, lengths_B, logits_BxV), out, done_B | ended_B | full_B

    init = (jnp.int32(0), (kv0, state.cache.lengths_B, state.logits_BxV), out, done0)
    _, (kv, lengths_B, logits_BxV), out, _ = jax.lax.while_loop(cond, body, init)
    k_LxBxSxKxH = jnp.transpose(jnp.stack([k for k, _ in kv]), (0, 1, 4, 2, 3))
    cache = Cache(k_LxBxSxKxH, jnp.swapaxes(jnp.stack([v for _, v in kv]), 2, 3), lengths_B)
    return DecodeState(cache, logits_BxV), out


@functools.lru_cache(maxsize=64)
def _decode_fn(
    config: ModelConfig, mesh: Mesh | None, batch: int, max_length: int,
    max_new_tokens: int, sampling: Sampling,
):
    fn = functools.partial(_decode, config=config, max_new_tokens=max_new_tokens, sampling=sampling)
    out = None
    if mesh is not None:
        rows = lambda *shape: _rows(mesh, shape)  # noqa: E731
        n = max_new_tokens
        out = (
            _state_shardings(mesh, config, batch, max_length),
            Decoded(rows(batch, n), rows(batch, n), rows(batch), rows(batch), rows(batch)),
        )
    return jax.jit(fn, out_shardings=out, donate_argnames="state")


def decode(
    params: Params,
    config: ModelConfig,
    state: DecodeState,
    keys_B: jax.Array,
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    active_B: jax.Array | np.ndarray | None = None,
    mesh: Mesh | None = None,
) -> tuple[DecodeState, Decoded]:
    """Samples up to `max_new_tokens` per active row in one jitted while_loop; donates `state`.

    keys_B: one jax.random key per row (typed key array). Stops when every row has emitted a stop token,
    reached max_new_tokens, or filled its cache (reported in `Decoded.truncated_B`).
    """
    b, s = state.cache.lengths_B.shape[0], state.cache.max_length
    if active_B is None:
        active_B = np.ones((b,), bool)
    active_B = sharding.put(np.asarray(active_B, bool), mesh, ("batch",))
    if mesh is not None:
        keys_B = jax.device_put(keys_B, _rows(mesh, keys_B.shape))
    with _with_mesh(mesh):
        fn = _decode_fn(config, mesh, b, s, max_new_tokens, sampling)
        return fn(params, state=state, keys_B=keys_B, active_B=active_B)


# ----------------------------------------------------------------------------- generate


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pad_batch(
    prompts: Sequence[Sequence[int]], *, mesh: Mesh | None = None, min_rows: int = 0, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded tokens_BxT and lengths_B of a ragged batch, ready for `prefill`.

    B is at least `min_rows` (one shape, one compile, across batches) and a multiple of the data axes;
    the extra rows hold one pad token and are to be kept inactive. T is rounded up to BUCKET.
    """
    n = len(prompts)
    row_mult = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    b = round_up(max(n, min_rows), row_mult)
    lengths = np.array([len(p) for p in prompts] + [1] * (b - n), np.int32)
    tokens = np.full((b, round_up(int(lengths.max()), BUCKET)), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, lengths


@functools.partial(jax.jit, static_argnames="num_rows")
def row_keys(key: jax.Array, num_rows: int) -> jax.Array:
    """Row b's key is fold_in(key, b): the same prompt at the same index samples the same way."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(num_rows))


def generate(
    params: Params,
    config: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    key: jax.Array,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] = (),
    mesh: Mesh | None = None,
) -> Generation:
    """Samples a continuation of every prompt (lists of token ids of any lengths); row b's randomness
    is fold_in(key, b). Returns new tokens up to and including the first stop token."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    n = len(prompts)
    tokens, lengths = pad_batch(prompts, mesh=mesh)
    b = len(lengths)
    max_length = round_up(int(lengths.max()) + max_new_tokens, BUCKET)
    sampling = Sampling(float(temperature), int(top_k), float(top_p), tuple(int(s) for s in stop_tokens))
    state, _ = prefill(params, config, tokens, lengths, max_length=max_length, mesh=mesh)
    active = np.arange(b) < n
    _, out = decode(
        params, config, state, row_keys(key, b),
        max_new_tokens=max_new_tokens, sampling=sampling, active_B=active, mesh=mesh,
    )
    out = jax.device_get(out)
    num = out.num_tokens_B
    return Generation(
        tokens=[out.tokens_BxN[i, : num[i]].tolist() for i in range(n)],
        logprobs=[out.logprobs_BxN[i, : num[i]].tolist() for i in range(n)],
        finished=out.finished_B[:n].tolist(),
        truncated=out.truncated_B[:n].tolist(),
    )
