"""Weighted SFT trainer: the loop around `update.train_step`, with resume, checkpoints, logging and NaN stops.

Use:
    params = trainer.run(update.TrainConfig(...), model_config, "examples.arrayrecord", init_params, workdir, mesh)
`run` resumes from the newest readable checkpoint in `workdir/checkpoints` (same seed and data; with the
seconds the stage had spent when it was saved, runtime/clock.py), logs
to `workdir/metrics.jsonl` and TensorBoard event files in `workdir/tb`, saves every `save_every` steps and
on SIGTERM, and stops with `NonFiniteLossError` (no checkpoint of the bad state) if the loss is NaN/Inf.

The step it runs (loss sum(w*l)/sum(w) over the global batch, AdamW, the sharded state) is `update.py`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import jax

from drift_jax.lm.model import ModelConfig, Params
from drift_jax.runtime import clock, files
from drift_jax.train import batches, checkpoint, update

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


# ----------------------------------------------------------------------------- logging


class MetricWriter:
    """JSONL + TensorBoard on process 0; no-op elsewhere.

    A local workdir is appended to as it goes. On an object store (no appends) metrics.jsonl is rewritten
    whole every `upload_every` steps and at close, and the TensorBoard events are written locally and
    uploaded at close."""

    def __init__(self, workdir: str, upload_every: int = 100):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        self.workdir, self.upload_every, self.local = workdir, upload_every, files.is_local(workdir)
        self.jsonl_path = files.join(workdir, "metrics.jsonl")
        self.lines: list[str] = []
        if self.local:
            os.makedirs(workdir, exist_ok=True)
            self.jsonl = open(self.jsonl_path, "a")
            self.tb_dir = os.path.join(workdir, "tb")
        else:
            self.lines = files.read_text(self.jsonl_path).splitlines(keepends=True) if files.exists(
                self.jsonl_path) else []
            self.tb_dir = tempfile.mkdtemp(prefix="drift-tb-")
        self.tb = SummaryWriter(self.tb_dir)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, **metrics}) + "\n"
        if self.local:
            self.jsonl.write(line)
            self.jsonl.flush()
        else:
            self.lines.append(line)
            if len(self.lines) % self.upload_every == 0:
                files.write_text(self.jsonl_path, "".join(self.lines))
        for k, v in metrics.items():
            self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.tb.close()
        if self.local:
            self.jsonl.close()
            return
        files.write_text(self.jsonl_path, "".join(self.lines))
        files.move(self.tb_dir, files.join(self.workdir, "tb"))


# ----------------------------------------------------------------------------- loop


def run(
    config: update.TrainConfig,
    model_config: ModelConfig,
    examples: str | Sequence[str] | Sequence[batches.Example] | batches.ExampleSource,
    init_params: Params | Callable[[], Params],
    workdir: str | os.PathLike,
    mesh,
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Params:
    """Trains (or resumes) and returns the final params, sharded on `mesh`.

    `init_params`: params, or a function making them (not called when resuming). `on_step(step,
    metrics)` is called on the host after each step's metrics are read (step = steps done).
    """
    workdir = files.absolute(workdir)
    work = clock.current()  # the stage's seconds: stored with each checkpoint, restored with it
    source = examples if isinstance(examples, batches.ExampleSource) else batches.ExampleSource(examples)
    batcher = batches.Batcher(source, config.batch_config())
    total = config.max_steps if config.max_steps is not None else batcher.total_steps(config.epochs)
    if total < 1:  # e.g. fewer packed rows than one global batch: the policy would come back untrained
        raise ValueError(
            f"no optimizer step to take: {len(batcher.epoch_rows(0))} rows of seq_len={config.seq_len} per epoch "
            f"(packed from {len(batcher.valid)} usable examples) do not fill one batch of batch_size="
            f"{config.batch_size}; lower batch_size, or give more data")
    tx = update.make_optimizer(config, total)
    state_sh = update.state_shardings(mesh, model_config, tx)
    batch_sh = update.batch_shardings(mesh, batcher.global_shapes())
    data_key = {"seed": config.seed, "fingerprint": batcher.fingerprint}

    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep,
                                   async_save=config.async_checkpoints)
    restored = ckpt.restore_latest(update.abstract_state(model_config, tx, state_sh))
    if restored is not None:
        start, state, position = restored
        if {k: position.get(k) for k in data_key} != data_key:
            raise ValueError(f"checkpoint in {workdir} was written for other data or seed: {position} vs {data_key}")
        work.resumed(position.get("seconds"))
        log.info("resumed from step %d", start)
    else:
        start = 0
        params = init_params() if callable(init_params) else init_params
        state = update.sharded_state(params, tx, state_sh)

    step_fn = update.compile_train_step(model_config, tx, mesh, state_sh, batch_sh)
    writer = MetricWriter(workdir)
    fpt = update.flops_per_token(model_config, config.seq_len)
    schedule = update.lr_schedule(config, total)
    last_good = start if restored is not None else None
    progress = None
    if config.progress_bar and jax.process_index() == 0:
        from tqdm import tqdm

        progress = tqdm(total=total, initial=start, desc="train", unit="step")

    pending: tuple[int, dict[str, jax.Array]] | None = None
    last_time = time.perf_counter()

    def drain() -> None:
        # Reads the metrics of the step in flight (blocks on it only), checks them, logs them.
        nonlocal pending, last_time
        if pending is None:
            return
        done, m = pending
        pending = None
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        now = time.perf_counter()
        dt, last_time = now - last_time, now
        if not math.isfinite(m["loss"]):
            raise NonFiniteLossError(
                f"loss is {m['loss']} at step {done} (grad_norm {m['grad_norm']}); stopped without saving. "
                f"The last good checkpoint is step {last_good} in {ckpt.directory}."
            )
        m["lr"] = float(schedule(done - 1))
        m["step_time_s"] = dt
        m["tokens_per_s"] = m["tokens"] / dt
        if config.peak_flops_per_device:
            m["mfu"] = fpt * m["tokens"] / dt / (config.peak_flops_per_device * jax.device_count())
        writer.write(done, m)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{m['loss']:.4f}", gnorm=f"{m['grad_norm']:.3f}")
        if on_step is not None:
            on_step(done, m)

    try:
        with checkpoint.PreemptionGuard() as guard, jax.set_mesh(mesh):
            for step in range(start, total):
                batch = batcher.global_batch(step, mesh)
                state, metrics = step_fn(state, batch)  # dispatch step before reading the last one
                drain()
                pending = (step + 1, metrics)
                preempted = guard.requested or ckpt.reached_preemption(step + 1)
                if (step + 1) % config.save_every == 0 or step + 1 == total or preempted:
                    drain()  # never save a state whose loss was not checked
                    ckpt.save(step + 1, state, {**data_key, "step": step + 1, "seconds": work.elapsed()})
                    last_good = step + 1
                    last_time = time.perf_counter()  # keep the save's host copy out of tokens/s
                if preempted:
                    log.warning("preempted: saved step %d, stopping", step + 1)
                    break
            drain()
        ckpt.wait()
    finally:
        ckpt.close()
        writer.close()
        if progress is not None:
            progress.close()
    return state.params
