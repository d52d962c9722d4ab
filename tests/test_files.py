"""Workdir files (`runtime.files`) on a local folder and on an emulated `gs://` bucket: the same calls, the
same contents; writes are whole or nothing; the libraries that need local files get local copies."""

import json
import os

import msgpack
import numpy as np
import pytest

from drift_jax.rollout import driver
from drift_jax.runtime import files
from drift_jax.train import batches
from tests.test_multihost import gcs  # noqa: F401  (the emulator fixture)


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFT_CACHE", str(tmp_path / "cache"))
    if request.param == "local":
        return str(tmp_path / "work")
    request.getfixturevalue("gcs")
    return f"gs://drift/{tmp_path.name}"


def test_write_read_walk_move(root, tmp_path):
    files.write_text(files.join(root, "a", "b.json"), '{"x": 1}')
    files.write_bytes(files.join(root, "c.bin"), b"\0\1")
    assert files.read_text(files.join(root, "a", "b.json")) == '{"x": 1}'
    assert [os.path.relpath(f, root) for f in files.walk_files(root)] == ["a/b.json", "c.bin"]
    files.move(files.join(root, "a"), files.join(root, "old", "a"))
    assert not files.exists(files.join(root, "a")) and files.exists(files.join(root, "old", "a", "b.json"))
    with files.local_output(files.join(root, "hf"), is_dir=True) as d:
        open(os.path.join(d, "config.json"), "w").write("{}")
    local = files.local_input(files.join(root, "hf"))
    assert os.path.exists(os.path.join(local, "config.json")) and os.path.isabs(local)
    assert (local == files.join(root, "hf")) == files.is_local(root)  # local paths are used in place


def test_failed_write_leaves_nothing(root):
    with pytest.raises(RuntimeError), files.local_output(files.join(root, "x.arrayrecord")) as local:
        open(local, "w").write("partial")
        raise RuntimeError("killed mid-write")
    assert not files.exists(files.join(root, "x.arrayrecord"))


def test_examples_and_shards_round_trip(root):
    from tests.test_batches import make_examples

    path = files.join(root, "drift", "examples.arrayrecord")
    examples = make_examples(5)
    assert batches.write_examples(path, examples) == 5
    src = batches.ExampleSource(path)
    for i in range(5):
        np.testing.assert_array_equal(src[i]["tokens"], examples[i]["tokens"])
    records = [{"problem_id": f"p{i}", "sample": 0, "turns": []} for i in range(3)]
    driver._write_shard(driver.shard_path(files.join(root, "rollouts"), 0), records)
    assert driver.read_rollouts(files.join(root, "rollouts")) == [msgpack.unpackb(msgpack.packb(r)) for r in records]


def test_metric_writer(root):
    from drift_jax.train import trainer

    writer = trainer.MetricWriter(files.join(root, "train"))
    for step in (1, 2):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    lines = files.read_text(files.join(root, "train", "metrics.jsonl")).splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    assert any("tfevents" in f for f in files.walk_files(files.join(root, "train", "tb")))
