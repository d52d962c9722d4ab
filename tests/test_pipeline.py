"""End to end at tiny scale: every stage runs, results.json/report are written, a rerun resumes from cache."""

import json
import os

import pytest

from configs import quickstart
from drift_jax import pipeline


def tiny_config():
    c = quickstart.get_config()
    c.max_turns = 2
    c.mesh = dict(data=4, fsdp=1, tensor=2)
    c.model.scratch = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
    c.reference.num_demos = 64
    c.reference.train.update(epochs=1, batch_size=8, seq_len=64, progress_bar=False)
    c.rollout.update(num_problems=6, num_samples=2, rows_per_batch=8, problems_per_shard=4)
    c.train.update(epochs=1, batch_size=4, seq_len=96, progress_bar=False)
    c.eval.update(num_problems=8, rows_per_batch=8)
    c.drift.all_fail = "keep"  # an untrained tiny policy solves nothing: "drop" would leave no examples
    return c


def test_pipeline_end_to_end_and_resume(tmp_path, capsys):
    cfg = tiny_config()
    results = pipeline.run(cfg, str(tmp_path))
    methods = results["methods"]
    assert set(methods) == {"reference", "drift"}
    for m in methods.values():
        assert all(0.0 <= m[f"multi@{k}"] <= 1.0 for k in (1, 2)) and m["multi@1"] <= m["multi@2"]
    assert methods["drift"]["wall_seconds"] > 0 and methods["drift"]["tokens_generated"] > 0
    for name in ("results.json", "report.md", "report.png", "eval_drift.json", "reference/hf/config.json",
                 "reference/hf/tokenizer.json", "drift/hf/model.safetensors", "rollouts/rollouts-00001.arrayrecord"):
        assert os.path.exists(tmp_path / name), name
    assert json.loads((tmp_path / "results.json").read_text())["methods"] == methods
    ev = json.loads((tmp_path / "eval_drift.json").read_text())
    assert len(ev["solved_turns"]) == 8
    capsys.readouterr()
    # A rerun does no work: every stage is cached, and the results are the same.
    again = pipeline.run(cfg, str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("cached") == 6 and again["methods"] == methods


def test_baseline_free_methods_subset(tmp_path):
    cfg = tiny_config()
    cfg.methods = ("reference",)
    results = pipeline.run(cfg, str(tmp_path))
    assert set(results["methods"]) == {"reference"} and not os.path.exists(tmp_path / "rollouts")


def test_no_successful_group_with_drop_is_a_clear_error(tmp_path):
    cfg = tiny_config()
    cfg.drift.all_fail = "drop"
    with pytest.raises(ValueError, match="no trajectory has a positive weight"):
        pipeline.run(cfg, str(tmp_path))


def test_unknown_task_file_is_a_clear_error(tmp_path):
    cfg = tiny_config()
    cfg.task.name = "math500"
    cfg.task.data_dir = str(tmp_path / "tfds")
    cfg.task.manual_dir = str(tmp_path / "missing")
    cfg.model.hf_path = str(tmp_path / "nowhere")
    with pytest.raises((FileNotFoundError, ValueError)):
        pipeline.run(cfg, str(tmp_path / "work"))
