"""Checkpoints: kill -9 then resume equals an uninterrupted run; SIGTERM saves; corrupt latest falls back;
an eight-device checkpoint restores on four devices.

Run as a script, this file is the worker the kill -9 test launches (and kills):
    python tests/test_checkpoint.py WORKDIR EXAMPLES
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from drift_jax.lm import model, sharding
from drift_jax.runtime import clock
from drift_jax.train import batches, checkpoint, trainer, update

CFG = model.ModelConfig(
    vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
)
TC = update.TrainConfig(lr=1e-2, batch_size=2, seq_len=40, epochs=2, save_every=3, keep=2, progress_bar=False)


def _run(workdir, examples, on_step=None, mesh=None, config=TC):
    mesh = mesh or sharding.make_mesh({"data": 2}, jax.devices()[:2])  # 2 rows per batch: one per device
    params = trainer.run(config, CFG, examples, lambda: model.init_params(CFG, jax.random.key(0)), workdir, mesh,
                         on_step=on_step)
    return jax.device_get(params)


def _losses(workdir):
    """step -> loss; a resumed run's later lines win (they re-log the steps after the resume point)."""
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {line["step"]: line["loss"] for line in lines}


def _assert_same_params(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def examples_path(tmp_path_factory):
    from tests.test_batches import make_examples

    path = tmp_path_factory.mktemp("data") / "examples.arrayrecord"
    batches.write_examples(path, make_examples(60))
    return str(path)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, examples_path):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    params = _run(workdir, examples_path)
    return workdir, params, _losses(workdir)


def test_kill9_then_resume_equals_uninterrupted(tmp_path, examples_path, uninterrupted):
    _, want_params, want_losses = uninterrupted
    total = max(want_losses)
    workdir = str(tmp_path / "run")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}  # XLA_FLAGS (8 devices) come from conftest.py
    proc = subprocess.Popen([sys.executable, __file__, workdir, examples_path], cwd=root, env=env)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 120
    # Kill at a moment we do not choose exactly: once it has logged step 7 (checkpoints at 3 and 6).
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 7:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "worker ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(workdir))
    assert 7 <= killed_at < total

    params = _run(workdir, examples_path)
    _assert_same_params(params, want_params)
    assert _losses(workdir) == want_losses


def test_sigterm_saves_and_stops_then_resumes(tmp_path, examples_path, uninterrupted, monkeypatch):
    _, want_params, want_losses = uninterrupted
    workdir = str(tmp_path / "run")
    now = [0.0]  # every step takes 10 s of the stage's clock
    monkeypatch.setattr(clock, "_now", lambda: now[0])

    def preempt(step, _):
        now[0] += 10.0
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with clock.measuring() as first:
        _run(workdir, examples_path, on_step=preempt)
    steps = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
    # The signal arrives while step 5 is in flight: that step finishes, is saved, and the run stops.
    assert steps[-1] in (4, 5) and max(_losses(workdir)) == steps[-1]
    assert first.elapsed() == 10.0 * steps[-1]
    with clock.measuring() as second:  # the rerun: a new attempt of the same stage
        _assert_same_params(_run(workdir, examples_path, on_step=lambda step, _: now.__setitem__(0, now[0] + 10.0)),
                            want_params)
    assert _losses(workdir) == want_losses
    # It restored the seconds saved with the checkpoint: the stage took what the uninterrupted run would.
    assert second.earlier == 10.0 * steps[-1] and second.elapsed() == 10.0 * max(want_losses)


def test_corrupted_latest_checkpoint_falls_back(tmp_path, examples_path, uninterrupted, caplog):
    src, want_params, want_losses = uninterrupted
    workdir = str(tmp_path / "run")
    shutil.copytree(src, workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    latest, before = checkpoint.Checkpointer(ckpt_dir).all_steps()[-1:-3:-1]
    for root, _, files in os.walk(os.path.join(ckpt_dir, str(latest), "state")):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    with caplog.at_level(logging.WARNING):
        params = _run(workdir, examples_path)  # resumes from `before` and retrains the last steps
    assert f"checkpoint at step {latest}" in caplog.text and "unreadable" in caplog.text
    assert any(p.startswith(f"unreadable_checkpoint_{latest}_") for p in os.listdir(workdir))
    _assert_same_params(params, want_params)
    assert _losses(workdir) == want_losses
    assert before < latest


def test_eight_device_checkpoint_restores_on_four_devices(tmp_path):
    tx = update.make_optimizer(TC, 10)
    mesh8 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sh8 = update.state_shardings(mesh8, CFG, tx)
    state = jax.jit(lambda: update.init_state(model.init_params(CFG, jax.random.key(3)), tx), out_shardings=sh8)()
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(7, state, {"step": 7})
    ckpt.wait()

    mesh4 = sharding.make_mesh({"fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
    sh4 = update.state_shardings(mesh4, CFG, tx)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sh4)
    step, restored, position = checkpoint.Checkpointer(tmp_path).restore_latest(abstract)
    assert step == 7 and position == {"step": 7}
    q = restored.params["layers"]["attn"]["q"]
    assert set(q.sharding.device_set) == set(jax.devices()[:4]) and q.sharding == sh4.params["layers"]["attn"]["q"]
    _assert_same_params(restored, jax.device_get(state))


if __name__ == "__main__":
    # Worker for the kill -9 test: the same run, slowed so the parent can kill it mid-training.
    jax.config.update("jax_default_matmul_precision", "highest")  # as conftest.py
    _run(sys.argv[1], sys.argv[2], on_step=lambda *_: time.sleep(0.3))


def _saved_state(tmp_path, cfg=CFG, steps=(3, 6)):
    tx = update.make_optimizer(TC, 10)
    mesh = sharding.make_mesh({"data": -1})
    sh = update.state_shardings(mesh, cfg, tx)
    state = update.sharded_state(model.init_params(cfg, jax.random.key(0)), tx, sh)
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    for s in steps:
        ckpt.save(s, state, {"step": s})
    ckpt.wait()
    return tx, sh, update.abstract_state(cfg, tx, sh)


def test_shape_mismatch_is_raised_with_expected_and_found_and_nothing_moved(tmp_path):
    tx, _, _ = _saved_state(tmp_path)
    wider = CFG.replace(mlp_dim=64)
    target = update.abstract_state(wider, tx, update.state_shardings(sharding.make_mesh({"data": -1}), wider, tx))
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=r"step 6(.|\n)*params/layers/mlp/gate: expected \(2, 32, 64\) float32, found \(2, 32, 48\)"):
        checkpoint.Checkpointer(tmp_path).restore_latest(target)
    assert checkpoint.Checkpointer(tmp_path).all_steps() == [3, 6]  # neither checkpoint moved aside
    assert not [p for p in os.listdir(tmp_path.parent) if p.startswith("unreadable_checkpoint")]


@pytest.mark.parametrize("error", [RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 12 GiB"),
                                   ValueError("UNAVAILABLE: storage backend timed out, try again"),
                                   OSError(5, "Input/output error"), MemoryError()])
def test_infrastructure_errors_are_raised_and_nothing_moved(tmp_path, monkeypatch, error):
    _, _, target = _saved_state(tmp_path)
    ckpt = checkpoint.Checkpointer(tmp_path)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(ckpt.manager, "restore", fail)
    with pytest.raises(checkpoint.CheckpointReadError, match="not for a fault of the checkpoint.*left in place"):
        ckpt.restore_latest(target)
    assert checkpoint.Checkpointer(tmp_path).all_steps() == [3, 6]


def test_partial_latest_checkpoint_is_quarantined(tmp_path, caplog):
    """A checkpoint missing its data files (a copy cut short) is unreadable: moved aside, the one before restored."""
    _, _, target = _saved_state(tmp_path / "ckpt")
    for root, _, files in os.walk(tmp_path / "ckpt" / "6" / "state"):
        if os.path.basename(root) == "d":
            for f in files:
                os.remove(os.path.join(root, f))
    with caplog.at_level(logging.WARNING):
        step, _, data = checkpoint.Checkpointer(tmp_path / "ckpt").restore_latest(target)
    assert step == 3 and data == {"step": 3} and "step 6" in caplog.text
    assert [p for p in os.listdir(tmp_path) if p.startswith("unreadable_checkpoint_6_")]
