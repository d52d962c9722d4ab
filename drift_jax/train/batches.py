"""Weighted SFT examples on disk (ArrayRecord) and their deterministic, packed, host-sharded batches.

Record format (one ArrayRecord record per example, msgpack-encoded; `sft_examples.make_example` makes them):
  tokens     int32 [T]
  loss_mask  int8  [T]   1 where tokens[t] is a target, predicted from tokens[:t] (assistant tokens)
  weight     float32     the trajectory's importance weight w (a policy-gradient advantage may be negative)
  mass       float32     optional: the example's share of the loss denominator (default: weight)
  group_id, example_id   optional strings
`write_examples(path, examples)` writes them; `ExampleSource(path_or_list)` reads them (random access).

Batches. Examples are packed, in a shuffled order, into rows of `seq_len` tokens (several examples per
row, told apart by `segment_ids`, positions restarting at 0 for each example; `pack=False` gives one
example per padded row). A global batch is `batch_size` rows, laid out as `micro_batches` micro-batches
of `batch_size // micro_batches` rows. The order is a pure function of (seed, epoch, step): `Batcher`
plans each epoch from the seed and the examples' lengths only, so a resumed run sees exactly the
batches it would have seen. Each host builds only the rows its devices hold (`Batcher.global_batch`).

Per-token weights carry the loss normalisation, so that the trainer's loss
    sum_e w_e * l_e / sum_e m_e        (over the GLOBAL batch; m_e = mass_e, by default w_e)
is one sum over tokens divided by one sum over rows, whatever the split into micro-batches or hosts:
  token_weight[t] = w_e / n_e  (loss_reduction "token_mean", n_e = scored tokens of e)  or  w_e  ("token_sum")
  row_weight[r]   = sum of m_e over the examples packed in row r.
Weighted SFT leaves mass out (loss = weighted mean); online RL's signed advantages sum to about zero, so
it gives each example mass 1 (loss = mean over trajectories of A_e * l_e).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import jax
import msgpack
import numpy as np

from drift_jax.runtime import files

Example = Mapping[str, Any]
LossReduction = Literal["token_mean", "token_sum"]

# Batch fields and their logical axes ([M micro-batches, R rows, T tokens]).
BATCH_AXES = {
    "tokens": (None, "batch", "length"),
    "targets": (None, "batch", "length"),
    "token_weight": (None, "batch", "length"),
    "scored": (None, "batch", "length"),
    "positions": (None, "batch", "length"),
    "segment_ids": (None, "batch", "length"),
    "row_weight": (None, "batch"),
}


# ----------------------------------------------------------------------------- records


def encode_example(example: Example) -> bytes:
    record = {
        "tokens": np.asarray(example["tokens"], np.int32).tobytes(),
        "loss_mask": np.asarray(example["loss_mask"], np.int8).tobytes(),
        "weight": float(example["weight"]),
    }
    if example.get("mass") is not None:
        record["mass"] = float(example["mass"])
    for key in ("group_id", "example_id"):
        if example.get(key) is not None:
            record[key] = str(example[key])
    return msgpack.packb(record)


def decode_example(data: bytes) -> dict[str, Any]:
    record = msgpack.unpackb(data)
    record["tokens"] = np.frombuffer(record["tokens"], np.int32)
    record["loss_mask"] = np.frombuffer(record["loss_mask"], np.int8)
    record["weight"] = np.float32(record["weight"])
    if "mass" in record:
        record["mass"] = np.float32(record["mass"])
    return record


def write_examples(path: str | os.PathLike, examples: Iterable[Example]) -> int:
    """Writes examples to one ArrayRecord file (group_size 1: random access). Returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    with files.local_output(path) as local:  # whole or not at all; uploaded when the path is remote
        writer = ArrayRecordWriter(local, "group_size:1")
        n = 0
        for example in examples:
            if len(example["tokens"]) != len(example["loss_mask"]):
                raise ValueError(f"example {n}: tokens and loss_mask lengths differ")
            writer.write(encode_example(example))
            n += 1
        writer.close()
    return n


class ExampleSource:
    """Random access to weighted examples: ArrayRecord path(s) or an in-memory list."""

    def __init__(self, source: str | os.PathLike | Sequence[str] | Sequence[Example]):
        if isinstance(source, (str, os.PathLike)):
            source = [os.fspath(source)]
        if source and isinstance(source[0], (str, os.PathLike)):
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            self._records = ArrayRecordDataSource([files.local_input(p) for p in source])
            self._decode = decode_example
        else:
            self._records = list(source)
            self._decode = lambda e: e

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._decode(self._records[int(i)])


# ----------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    batch_size: int  # rows per global step
    seq_len: int
    micro_batches: int = 1
    pack: bool = True
    seed: int = 0
    loss_reduction: LossReduction = "token_mean"
    drop_remainder: bool = True  # drop the last, partial global batch of each epoch

    def __post_init__(self):
        if self.batch_size % self.micro_batches:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of micro_batches={self.micro_batches}")
        if self.loss_reduction not in ("token_mean", "token_sum"):
            raise ValueError(f"loss_reduction must be token_mean|token_sum, got {self.loss_reduction!r}")


def batch_shapes(config: BatchConfig) -> dict[str, tuple[int, ...]]:
    """Global shape of each batch field: [M micro-batches, R rows, T tokens] ([M, R] for row_weight)."""
    m, t = config.micro_batches, config.seq_len
    r = config.batch_size // m
    return {k: (m, r) if k == "row_weight" else (m, r, t) for k in BATCH_AXES}


def pack_rows(order: Sequence[int], lengths: np.ndarray, seq_len: int, pack: bool) -> list[list[int]]:
    """Greedy packing in the given order: an example goes into the current row if it fits, else starts one."""
    rows: list[list[int]] = []
    row: list[int] = []
    used = 0
    for i in order:
        n = int(lengths[i])
        if row and (not pack or used + n > seq_len):
            rows.append(row)
            row, used = [], 0
        row.append(int(i))
        used += n
    if row:
        rows.append(row)
    return rows


class Batcher:
    """Deterministic global batches: `global_batch(step)` depends only on (seed, epoch, step in epoch)."""

    def __init__(self, source: ExampleSource, config: BatchConfig):
        self.source, self.config = source, config
        lengths, keep = [], []
        content = hashlib.sha256()  # what is trained on, not just its lengths: a re-weighting changes it
        for i in range(len(source)):
            e = source[i]
            n = len(e["tokens"])
            for key in ("tokens", "loss_mask"):
                content.update(np.ascontiguousarray(e[key], np.int32).tobytes())
            content.update(np.asarray([e["weight"], e.get("mass", np.nan)], np.float32).tobytes())
            scored = int(np.count_nonzero(np.asarray(e["loss_mask"])[1:]))
            lengths.append(n)
            keep.append(n <= config.seq_len and scored > 0)
        self.lengths = np.asarray(lengths, np.int64)
        self._content = content.hexdigest()
        self.valid = np.flatnonzero(np.asarray(keep, bool))
        dropped = len(source) - len(self.valid)
        if dropped:
            logging.warning(
                "data: dropped %d of %d examples (longer than seq_len=%d or nothing scored)",
                dropped, len(source), config.seq_len,
            )
        if not len(self.valid):
            raise ValueError("no usable examples")
        self._plans: dict[int, list[list[int]]] = {}  # the latest epoch's plan only
        self._steps: dict[int, int] = {}

    @property
    def fingerprint(self) -> str:
        """Identifies the examples (tokens, masks, weights, masses) and the batching, so a resume refuses
        other data, a re-weighting included."""
        h = hashlib.sha256(self._content.encode())
        h.update(repr(dataclasses.astuple(self.config)).encode())
        return h.hexdigest()[:16]

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            rng = np.random.default_rng([self.config.seed, epoch])
            order = self.valid[rng.permutation(len(self.valid))]
            self._plans = {epoch: pack_rows(order, self.lengths, self.config.seq_len, self.config.pack)}
        return self._plans[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        if epoch not in self._steps:
            n, b = len(self.epoch_rows(epoch)), self.config.batch_size
            self._steps[epoch] = n // b if self.config.drop_remainder else -(-n // b)
        return self._steps[epoch]

    def position(self, step: int) -> tuple[int, int]:
        """Global step -> (epoch, step within the epoch)."""
        epoch = 0
        while step >= (n := self.steps_in_epoch(epoch)):
            if n == 0:
                raise ValueError("an epoch has no full batch; lower batch_size or set drop_remainder=False")
            step -= n
            epoch += 1
        return epoch, step

    def total_steps(self, epochs: int) -> int:
        return sum(self.steps_in_epoch(e) for e in range(epochs))

    def batch_rows(self, step: int) -> list[list[int]]:
        """Example indices of the batch's rows; row m * R + j is row j of micro-batch m (R rows each)."""
        epoch, i = self.position(step)
        rows = self.epoch_rows(epoch)[i * self.config.batch_size : (i + 1) * self.config.batch_size]
        return rows + [[] for _ in range(self.config.batch_size - len(rows))]

    def make_row(self, example_ids: Sequence[int]) -> dict[str, np.ndarray]:
        t = self.config.seq_len
        row = {
            "tokens": np.zeros(t, np.int32),
            "targets": np.zeros(t, np.int32),
            "token_weight": np.zeros(t, np.float32),
            "scored": np.zeros(t, bool),
            "positions": np.zeros(t, np.int32),
            "segment_ids": np.zeros(t, np.int32),
            "row_weight": np.float32(0.0),
        }
        start = 0
        for seg, i in enumerate(example_ids, start=1):
            e = self.source[i]
            tokens = np.asarray(e["tokens"], np.int32)
            n = len(tokens)
            # Position p predicts token p + 1: shift the mask so it marks the predicting position.
            scored = np.asarray(e["loss_mask"], bool)[1:]
            w = np.float32(e["weight"])
            per_token = w / scored.sum() if self.config.loss_reduction == "token_mean" else w
            sl = slice(start, start + n)
            row["tokens"][sl] = tokens
            row["targets"][start : start + n - 1] = tokens[1:]
            row["scored"][start : start + n - 1] = scored
            row["token_weight"][start : start + n - 1] = np.where(scored, np.float32(per_token), 0)
            row["positions"][sl] = np.arange(n)
            row["segment_ids"][sl] = seg
            row["row_weight"] = np.float32(row["row_weight"] + e.get("mass", w))
            start += n
        return row

    def global_shapes(self) -> dict[str, tuple[int, ...]]:
        return batch_shapes(self.config)

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        """The whole global batch on this host, [M, R, T] (tests and single-host use)."""
        rows = [self.make_row(r) for r in self.batch_rows(step)]
        shapes = self.global_shapes()
        return {k: np.stack([row[k] for row in rows]).reshape(shapes[k]) for k in BATCH_AXES}

    def global_batch(self, step: int, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
        """The global batch as sharded jax.Arrays; this host reads only the rows its devices hold."""
        from drift_jax.lm import sharding

        shapes = self.global_shapes()
        r = shapes["row_weight"][1]
        rows = self.batch_rows(step)
        cache: dict[int, dict[str, np.ndarray]] = {}

        def row(flat: int) -> dict[str, np.ndarray]:
            if flat not in cache:
                cache[flat] = self.make_row(rows[flat])
            return cache[flat]

        out = {}
        for key, axes in BATCH_AXES.items():
            shape = shapes[key]
            target = sharding.named_sharding(mesh, axes, shape)

            def callback(index, key=key, shape=shape):
                ms = range(*index[0].indices(shape[0]))
                rs = range(*index[1].indices(shape[1]))
                block = np.stack([np.stack([row(m * r + j)[key] for j in rs]) for m in ms])
                return block[(slice(None), slice(None)) + tuple(index[2:])]

            out[key] = jax.make_array_from_callback(shape, target, callback)
        return out
