"""Two local processes with four CPU devices each train like one process with eight devices.

Run as a script, this file is one of the two workers (over 127.0.0.1 only):
    python tests/test_distributed.py PROCESS_ID PORT WORKDIR EXAMPLES
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def _config():
    from drift_jax.lm import model

    return model.ModelConfig(
        vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
    )


def _train(workdir, examples):
    """The trained params, still sharded over the (possibly multi-host) mesh."""
    import jax

    from drift_jax.lm import model, sharding
    from drift_jax.train import trainer, update

    cfg = _config()
    tc = update.TrainConfig(lr=1e-2, batch_size=8, micro_batches=2, seq_len=40, max_steps=4, save_every=2,
                             progress_bar=False)
    mesh = sharding.make_mesh(MESH)
    return trainer.run(tc, cfg, examples, lambda: model.init_params(cfg, jax.random.key(0)), workdir, mesh)


def _gathered(params):
    import jax
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(params, tiled=True))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    import jax

    from drift_jax.train import batches
    from tests.test_batches import make_examples

    examples = str(tmp_path / "examples.arrayrecord")
    batches.write_examples(examples, make_examples(80))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    port, multi = _free_port(), str(tmp_path / "multi")
    procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), multi, examples], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]

    single = str(tmp_path / "single")
    want = _gathered(_train(single, examples))
    got = dict(np.load(os.path.join(multi, "params.npz")))
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(want)[0]}
    assert flat.keys() == got.keys()
    for k in flat:
        np.testing.assert_allclose(got[k], flat[k], atol=2e-6, err_msg=k)
    losses = [[json.loads(line)["loss"] for line in open(os.path.join(d, "metrics.jsonl"))] for d in (multi, single)]
    assert len(losses[0]) == 4
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    # The HF export of the 2-host run (written by process 0 alone; process 1's writes would raise) holds
    # exactly the gathered parameters, in two safetensors files of bounded size.
    from drift_jax.lm import hf

    export = os.path.join(multi, "export")
    assert sorted(os.listdir(export)) == ["config.json", "model-00001-of-00002.safetensors",
                                          "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    cfg, loaded = hf.load_hf(export)
    assert cfg == _config().replace(qkv_bias=True)  # a Qwen2 export always carries q/k/v biases: zero here
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
    assert set(got) < set(flat) and all("bias" in k and not flat[k].any() for k in set(flat) - set(got))
    for k in got:
        np.testing.assert_array_equal(flat[k], got[k], err_msg=k)


if __name__ == "__main__":
    process_id, port, workdir, examples = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    from drift_jax.runtime import distributed

    assert distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")  # as conftest.py
    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    sharded = _train(workdir, examples)
    params = _gathered(sharded)
    from drift_jax.lm import hf

    if process_id != 0:  # one writer: any file this process opened for the export would fail the test
        def forbidden(*args, **kwargs):
            raise AssertionError(f"process {process_id} wrote {args[:1]}")

        hf.save_file, hf.open = forbidden, forbidden
        hf.os = type("NoWrites", (), {"path": os.path, "makedirs": staticmethod(forbidden)})
    hf.save_hf(_config(), sharded, os.path.join(workdir, "export"), max_shard_bytes=40_000)
    if process_id == 0:
        flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(os.path.join(workdir, "params.npz"), **flat)
