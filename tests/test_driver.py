"""Rollout driver: resumable shards, kill -9 then re-run gives each trajectory once and identical,
sharded equals single-device, two real processes split the shards."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import rollout_fixture as fx

from drift_jax.lm import sharding
from drift_jax.rollout import driver
from drift_jax.runtime import clock


def _key(r):
    return (r["problem_id"], r["sample"])


def _strip_logprobs(records):
    return [{**r, "turns": [{k: v for k, v in t.items() if k != "logprobs"} for t in r["turns"]]} for r in records]


def _assert_same(got, want):
    """Equal records; log-probs to float rounding (a resumed or split run decodes the remaining rows at
    other row widths as the stage drains, and XLA:CPU's matmuls round by shape)."""
    assert _strip_logprobs(got) == _strip_logprobs(want)
    for a, b in zip(got, want):
        for t1, t2 in zip(a["turns"], b["turns"]):
            np.testing.assert_allclose(t1["logprobs"], t2["logprobs"], atol=1e-5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref"))
    stats = driver.rollout(fx.params(), fx.CFG, fx.CHAT, fx.problems(), fx.rollout_config(), out)
    return out, stats, driver.read_rollouts(out)


def test_every_pair_once(reference):
    out, stats, recs = reference
    assert stats["trajectories"] == 18 and len(recs) == 18
    assert sorted(_key(r) for r in recs) == sorted((p.id, s) for p in fx.problems() for s in range(3))
    assert sorted(os.listdir(out)) == sorted(  # 6 problems / 2 per shard, each with the stage's seconds when written
        [f"rollouts-{s:05d}.arrayrecord" for s in range(3)] + [f".rollouts-{s:05d}.seconds" for s in range(3)])
    for r in recs:
        assert 1 <= len(r["turns"]) <= 3
        for t in r["turns"]:
            assert len(t["logprobs"]) == len(t["response_ids"]) and all(lp <= 0 for lp in t["logprobs"])
    # samples of one problem differ (independent keys per sample)
    first = [r["turns"][0]["response_ids"] for r in recs if r["problem_id"] == recs[0]["problem_id"]]
    assert len({tuple(x) for x in first}) > 1


def test_rerun_skips_finished_shards(reference, tmp_path):
    out, _, recs = reference
    stats = driver.rollout(fx.params(), fx.CFG, fx.CHAT, fx.problems(), fx.rollout_config(), out)
    assert stats["trajectories"] == 0
    assert driver.read_rollouts(out) == recs


def test_batching_and_mesh_do_not_change_trajectories(reference, tmp_path):
    _, _, recs = reference
    mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
    cfg = fx.rollout_config(rows_per_batch=5, problems_per_shard=3)
    driver.rollout(fx.params(), fx.CFG, fx.CHAT, fx.problems(), cfg, str(tmp_path), mesh=mesh)
    other = driver.read_rollouts(str(tmp_path))
    a = {_key(r): r for r in recs}
    b = {_key(r): r for r in other}
    assert a.keys() == b.keys()
    # Tokens, texts, answers and returns are identical; log-probs agree to float32 reduction order.
    assert _strip_logprobs([a[k] for k in sorted(a)]) == _strip_logprobs([b[k] for k in sorted(b)])
    for k in a:
        for t1, t2 in zip(a[k]["turns"], b[k]["turns"]):
            np.testing.assert_allclose(t1["logprobs"], t2["logprobs"], atol=1e-5)


_PROCESS = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import rollout_fixture as fx
    from drift_jax.rollout import driver
    write = driver._write_shard
    def record(path, records):  # which shards this process wrote
        print("WROTE", json.dumps(os.path.basename(path)), flush=True)
        write(path, records)
    driver._write_shard = record
    p = int(sys.argv[2])
    driver.rollout(fx.params(), fx.CFG, fx.CHAT, fx.problems(), fx.rollout_config(), sys.argv[1],
                   process_index=p, num_processes=2)
""")


def test_processes_split_shards(reference, tmp_path):
    """Two real processes at once on one output directory: shard s is written by process s % 2 only, and
    together they give the single-process rollouts."""
    _, _, recs = reference
    script = tmp_path / "process.py"
    script.write_text(_PROCESS.format(tests=os.path.dirname(__file__)))
    out = tmp_path / "rollouts"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(p)], env=env, stdout=subprocess.PIPE,
                              text=True) for p in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    wrote = [sorted(json.loads(line[6:]) for line in o.splitlines() if line.startswith("WROTE ")) for o in outputs]
    assert wrote == [["rollouts-00000.arrayrecord", "rollouts-00002.arrayrecord"], ["rollouts-00001.arrayrecord"]]
    assert sorted(f for f in os.listdir(out) if not f.startswith(".")) == [f"rollouts-{s:05d}.arrayrecord" for s in range(3)]
    _assert_same(driver.read_rollouts(str(out)), recs)


_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import rollout_fixture as fx
    from drift_jax.lm import sampling
    from drift_jax.rollout import driver
    chunk = sampling.decode_chunk
    def slow(*a, **k):  # widen the window in which the parent can kill us mid-shard
        time.sleep(0.3)
        return chunk(*a, **k)
    sampling.decode_chunk = slow
    driver.rollout(fx.params(), fx.CFG, fx.CHAT, fx.problems(), fx.rollout_config(), sys.argv[1])
""")


def test_kill_9_then_rerun_gives_each_trajectory_once_identical(reference, tmp_path, monkeypatch):
    _, _, recs = reference
    out = tmp_path / "rollouts"
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not (out.exists() and any(f.endswith(".seconds") for f in os.listdir(out))):
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = [f for f in os.listdir(out) if f.endswith(".arrayrecord")]
    assert 1 <= len(done) < 3, done  # killed mid-run: some shards written, not all
    saved = max(float((out / f).read_text()) for f in os.listdir(out) if f.endswith(".seconds"))
    assert saved > 0  # the seconds at its newest shard (written after the shard)
    monkeypatch.setattr(clock, "_now", lambda: 0.0)  # the rerun itself takes no time on the stage's clock
    stats = driver.rollout(fx.params(), fx.CFG, fx.CHAT, fx.problems(), fx.rollout_config(), str(out))
    assert stats["seconds"] == pytest.approx(saved, abs=1e-3)  # the killed attempt's seconds, up to its last shard
    again = driver.read_rollouts(str(out))
    assert sorted(_key(r) for r in again) == sorted(_key(r) for r in recs)  # each pair exactly once
    _assert_same(again, recs)
