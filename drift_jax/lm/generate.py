"""One-turn generation over the sampler: ragged prompts in, continuations out (parity tests, benchmarks).

`generate(params, config, prompts, max_new_tokens=..., key=...)` pads a ragged batch (`pad_batch`),
prefills it and samples one turn with `sampling.decode`; row b's randomness is fold_in(key, b).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from drift_jax.lm.model import ModelConfig, Params
from drift_jax.lm.sample import Sampling
from drift_jax.lm.sampling import BUCKET, decode, prefill, round_up, row_keys


@dataclasses.dataclass
class Generation:
    """Host-side result of `generate`, one entry per prompt."""

    tokens: list[list[int]]  # new tokens up to and including the first stop token
    logprobs: list[list[float]]
    finished: list[bool]  # ended with a stop token
    truncated: list[bool]  # ran out of cache (never silently cut)


def pad_batch(
    prompts: Sequence[Sequence[int]], *, mesh: Mesh | None = None, min_rows: int = 0, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded tokens_BxT and lengths_B of a ragged batch, ready for `prefill`.

    B is at least `min_rows` and a multiple of the data axes (the extra rows hold one pad token and are
    to be kept inactive). T is rounded up to BUCKET.
    """
    n = len(prompts)
    row_mult = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    b = round_up(max(n, min_rows), row_mult)
    lengths = np.array([len(p) for p in prompts] + [1] * (b - n), np.int32)
    tokens = np.full((b, round_up(int(lengths.max()), BUCKET)), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, lengths


def generate(
    params: Params, config: ModelConfig, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, key: jax.Array,
    temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, stop_tokens: Sequence[int] = (),
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
    rule = Sampling(float(temperature), int(top_k), float(top_p), tuple(int(s) for s in stop_tokens))
    state, _ = prefill(params, config, tokens, lengths, max_length=max_length, mesh=mesh)
    _, out = decode(params, config, state, row_keys(key, b), max_new_tokens=max_new_tokens, sampling=rule,
                    active_B=np.arange(b) < n, mesh=mesh)
    out = jax.device_get(out)
    num = out.num_tokens_B
    return Generation(
        tokens=[out.tokens_BxN[i, : num[i]].tolist() for i in range(n)],
        logprobs=[out.logprobs_BxN[i, : num[i]].tolist() for i in range(n)],
        finished=out.finished_B[:n].tolist(),
        truncated=out.truncated_B[:n].tolist(),
    )
