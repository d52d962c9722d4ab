"""The whole pipeline under jax.distributed, as `launch/local_multihost.sh` runs it (processes on 127.0.0.1).

Against one process with 8 devices (the reference run, `configs/tiny.py` with every stage):
- 2 processes x 4 devices reproduce its results: the same trajectories, weights, multi@k and per-problem
  outcomes, and parameters equal to float reassociation (reductions run in another order across hosts);
- the work does not divide evenly: 5 rollout shards over 2 processes (3 and 2, the last one partial),
  15 evaluation problems (8 and 7);
- one process killed with SIGKILL mid-rollouts, then the same command again: every (problem, sample)
  exactly once, with the reference run's trajectories;
- a `gs://` workdir (a local GCS emulator: gcsfs honours STORAGE_EMULATOR_HOST, Orbax's tensorstore
  TENSORSTORE_GCS_HTTP_URL) holds every output, and no output is written locally.
Each run takes minutes on 2 cores, so these are `slow`; the fast versions (every CI run) are
`test_host_gathers_in_two_processes` here (the per-host pieces the pipeline is built from, in two real
processes) and tests/test_files.py (workdir files on the emulated bucket).

Run as a script, this file is one worker of `test_host_gathers_in_two_processes`:
    python tests/test_multihost.py PROCESS_ID PORT OUT
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Unequal work: 24 problems in shards of 5 (3 shards for process 0, 2 for process 1), 15 eval problems.
OVERRIDES = ("--config.rollout.num_problems=24", "--config.rollout.problems_per_shard=5",
             "--config.eval.num_problems=15")
OUTPUTS = ("results.json", "report.md", "report.png", "eval_reference.json", "eval_drift.json", "eval_online_rl.json",
           "reference/hf/model.safetensors", "reference/hf/tokenizer.json", "drift/hf/model.safetensors",
           "online_rl/hf/model.safetensors", "drift/examples.arrayrecord", "drift/weights.npy",
           "rollouts/rollouts-00004.arrayrecord", "stages/eval_online_rl.json", "online_rl/train/metrics.jsonl")
# Max |difference| of parameters between process layouts, measured: reference 2.5e-5 after 128 AdamW steps
# at lr 1e-2, DRIFT 5.6e-5; online RL 1.1e-3 (Adam's first steps move every weight by about lr whatever
# the gradient's size, so weights whose gradient is near zero move by +-lr on either layout). A host
# feeding wrong or missing rows changes the losses and trajectories, which are compared tightly.
PARAM_ATOL = {"reference": 1e-4, "drift": 2e-4, "online_rl": 5e-3}


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFT_", "XLA_FLAGS"))}
    return {**env, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "DEVICES": str(devices), **extra}


def _single(workdir: str, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "drift_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}", *OVERRIDES,
           *overrides]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _multi(workdir: str, *overrides: str, env: dict[str, str] | None = None, wait: bool = True):
    cmd = ["bash", os.path.join(ROOT, "launch", "local_multihost.sh"), "2", "configs/tiny.py", workdir, *OVERRIDES,
           *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(4, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if not wait:
        return proc
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference run: one process, 8 devices."""
    workdir = str(tmp_path_factory.mktemp("single") / "run")
    _single(workdir)
    return workdir


def _read(workdir: str, rel: str) -> bytes:
    from etils import epath

    return epath.Path(workdir, rel).read_bytes() if "://" in workdir else open(os.path.join(workdir, rel), "rb").read()


def _records(workdir: str) -> list[dict]:
    from drift_jax.rollout import driver

    return driver.read_rollouts(os.path.join(workdir, "rollouts"))


def _params(workdir: str, name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(_read(workdir, f"{name}/hf/model.safetensors"))


def _same_trajectories(got: list[dict], want: list[dict], logprob_atol: float) -> None:
    assert [(r["problem_id"], r["sample"]) for r in got] == [(r["problem_id"], r["sample"]) for r in want]
    for a, b in zip(got, want):
        assert [t["response_ids"] for t in a["turns"]] == [t["response_ids"] for t in b["turns"]]
        assert a["solved_turn"] == b["solved_turn"]
        np.testing.assert_allclose(np.concatenate([t["logprobs"] for t in a["turns"]]),
                                   np.concatenate([t["logprobs"] for t in b["turns"]]), atol=logprob_atol)


def _assert_reproduces(got: str, want: str) -> None:
    """The run in `got` reproduces the reference run in `want` (see the module docstring)."""
    results = [json.loads(_read(w, "results.json")) for w in (got, want)]
    for name, m in results[1]["methods"].items():
        assert {k: v for k, v in results[0]["methods"][name].items() if k.startswith("multi@")} == {
            k: v for k, v in m.items() if k.startswith("multi@")}, name
    for name in ("reference", "drift", "online_rl"):
        a, b = (json.loads(_read(w, f"eval_{name}.json")) for w in (got, want))
        assert a["problem_ids"] == b["problem_ids"] and a["solved_turns"] == b["solved_turns"], name
    records = _records(got)
    # The reference policies differ by float reassociation (PARAM_ATOL), so log-probs agree to ~5e-5.
    _same_trajectories(records, _records(want), logprob_atol=5e-4)
    assert len(records) == 24 * 2
    np.testing.assert_allclose(*(np.load(__import__("io").BytesIO(_read(w, "drift/weights.npy"))) for w in (got, want)),
                               rtol=1e-5)
    for name, atol in PARAM_ATOL.items():
        a, b = _params(got, name), _params(want, name)
        assert a.keys() == b.keys()
        worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
        assert worst <= atol, (name, worst)
    losses = [[json.loads(line) for line in _read(w, "online_rl/train/metrics.jsonl").decode().splitlines()]
              for w in (got, want)]
    assert [m["step"] for m in losses[0]] == [m["step"] for m in losses[1]] == [1, 2]
    for a, b in zip(*losses):  # the same returns at every iteration; the same loss from the same start
        # After the first update the policies differ by ~lr in the weights Adam moves on noise (PARAM_ATOL),
        # so later losses agree to ~0.3% (measured: -0.3513 vs -0.3504 at iteration 2).
        rtol = 1e-4 if a["step"] == 1 else 1e-2
        for key in ("return", "success", "loss"):
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-6, err_msg=f"{key} at iteration {a['step']}")


@pytest.mark.slow
def test_two_processes_reproduce_one_process(single, tmp_path):
    workdir = str(tmp_path / "run")
    _multi(workdir)
    _assert_reproduces(workdir, single)


def _process_pids(workdir: str) -> dict[int, int]:
    """{DRIFT_PROCESS_ID: pid} of the python processes running into `workdir`."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            environ = dict(e.split(b"=", 1) for e in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if b"drift_jax.main" in cmdline and f"--workdir={workdir}".encode() in cmdline and b"DRIFT_PROCESS_ID" in environ:
            found[int(environ[b"DRIFT_PROCESS_ID"])] = int(pid)
    return found


@pytest.mark.slow
def test_sigkill_mid_rollouts_then_restart_writes_each_episode_once(single, tmp_path):
    workdir = str(tmp_path / "run")
    for rel in ("reference", "eval_reference.json", "stages/reference.json", "stages/eval_reference.json"):
        src, dst = os.path.join(single, rel), os.path.join(workdir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
    methods = "--config.methods=('reference','drift')"
    proc = _multi(workdir, methods, wait=False)
    shards = os.path.join(workdir, "rollouts")
    deadline = time.time() + 600
    while not (os.path.isdir(shards) and any(f.endswith(".arrayrecord") for f in os.listdir(shards))):
        assert proc.poll() is None and time.time() < deadline, "the run ended before writing a shard"
        time.sleep(0.05)
    os.kill(_process_pids(workdir)[1], signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, out[-3000:]
    written = sorted(f for f in os.listdir(shards) if f.endswith(".arrayrecord"))
    assert 1 <= len(written) < 5, written  # killed mid-rollouts
    _multi(workdir, methods)  # the same command again resumes
    records = _records(workdir)
    assert sorted((r["problem_id"], r["sample"]) for r in records) == sorted(
        {(r["problem_id"], r["sample"]) for r in records})  # exactly once
    _same_trajectories(records, _records(single), logprob_atol=1e-5)  # the same reference policy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs(tmp_path):
    """A GCS emulator on 127.0.0.1 with a bucket `drift`; yields the environment that points the
    libraries at it."""
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    if not os.path.exists(exe):
        pytest.fail("gcp-storage-emulator is not installed (it is in requirements-test.txt)")
    server = subprocess.Popen([exe, "start", "--host=127.0.0.1", f"--port={port}", "--default-bucket=drift",
                               "--in-memory", "--quiet"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_CLOUD_PROJECT": "drift-test"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # this process reads the bucket too
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.kill()
        server.wait()


@pytest.mark.slow
def test_two_processes_into_a_gs_workdir_reproduce_one_process(single, tmp_path, gcs):
    local_tmp = tmp_path / "tmp"
    local_tmp.mkdir()
    cache = tmp_path / "cache"
    workdir = "gs://drift/runs/tiny"
    _multi(workdir, env={**gcs, "TMPDIR": str(local_tmp), "DRIFT_CACHE": str(cache)})
    from etils import epath

    for rel in OUTPUTS:
        assert epath.Path(workdir, rel).exists(), rel
    _assert_reproduces(workdir, single)
    # Nothing was written locally: no `gs:` folder, no staging left behind; only the read cache (copies of
    # policies and shards the libraries open as local files) and the log folder.
    assert not os.path.exists(os.path.join(ROOT, "gs:")) and not os.path.exists(os.path.join(ROOT, "runs", "tiny"))
    left = [p for p in local_tmp.iterdir() if not p.name.startswith(("drift-multihost-", "tmp"))]
    assert left == [], left


# ----------------------------------------------------------------------------- fast: the pieces, in 2 processes


def _worker(process_id: int, port: int, out: str) -> None:
    from drift_jax.runtime import distributed

    distributed.initialize(f"127.0.0.1:{port}", 2, process_id)
    import jax

    from drift_jax.lm import sharding
    from drift_jax.runtime import hosts

    mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
    local = hosts.local_mesh(mesh)
    mine = list(hosts.my_range(7))  # 7 items: 3 and 4
    # Unequal, variable-sized work per process, gathered in process order.
    got = hosts.allgather_objects([{"i": i, "tokens": list(range(i)), "lp": [0.5 * i]} for i in mine])
    # A global array split over both hosts, brought to this host's devices whole.
    x = jax.make_array_from_callback((8, 6), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
                                     lambda idx: np.arange(48.0).reshape(8, 6)[idx])
    y = hosts.localize({"w": x}, local)["w"]
    seconds = hosts.agree(float(process_id) + 0.25)
    with open(os.path.join(out, f"{process_id}.json"), "w") as f:
        json.dump({"mine": mine, "got": got, "local_shape": dict(local.shape),
                   "local_devices": sorted(d.id for d in local.devices.flat),
                   "y": np.asarray(y).tolist(), "y_devices": sorted(d.id for d in y.sharding.device_set),
                   "agreed": seconds}, f)


def test_host_gathers_in_two_processes(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), str(tmp_path)], cwd=ROOT, env=_env(4),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    r = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    assert r[0]["mine"] == [0, 1, 2] and r[1]["mine"] == [3, 4, 5, 6]
    want = [{"i": i, "tokens": list(range(i)), "lp": [0.5 * i]} for i in range(7)]
    assert r[0]["got"] == r[1]["got"] == want
    assert r[0]["agreed"] == r[1]["agreed"] == 0.25  # process 0's clock everywhere
    for i in range(2):
        assert r[i]["local_shape"] == {"data": 2, "fsdp": 1, "tensor": 2}
        assert r[i]["y_devices"] == r[i]["local_devices"] and len(r[i]["local_devices"]) == 4
        np.testing.assert_array_equal(r[i]["y"], np.arange(48.0).reshape(8, 6))
    assert not set(r[0]["local_devices"]) & set(r[1]["local_devices"])


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
