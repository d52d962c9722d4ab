"""End to end at tiny scale: every stage runs, results.json/report are written, a rerun resumes from cache."""

import json
import os

import pytest

from configs import quickstart
from drift_jax import pipeline, stage_io, stages, validate
from drift_jax.evaluation import held_out
from drift_jax.lm import sharding


def tiny_config():
    c = quickstart.get_config()
    c.methods = ("reference", "drift")
    c.max_turns = 2
    c.mesh = dict(data=4, fsdp=1, tensor=2)
    c.model.scratch = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
    c.reference.num_demos = 64
    c.reference.train.update(epochs=1, batch_size=8, seq_len=64, progress_bar=False)
    c.rollout.update(num_problems=6, num_samples=2, rows_per_batch=8, problems_per_shard=4)
    # Unpacked: SFT's 6 short examples would pack into fewer rows than one batch (no step to take).
    c.train.update(epochs=1, batch_size=4, seq_len=96, pack=False, progress_bar=False)
    c.budgets = dict(drift=0, sft_rollouts=0, rft=0, sft=0)  # train.epochs (1) for every method
    c.eval.update(num_problems=8, rows_per_batch=8)
    c.online_rl.update(problems_per_iteration=2, samples_per_problem=2, eval_every=1, budget_ratio=0.05)
    c.online_rl.train.update(batch_size=4, seq_len=96)
    c.drift.all_fail = "keep"  # an untrained tiny policy solves nothing: "drop" would leave no examples
    return c


def test_pipeline_end_to_end_and_resume(tmp_path, capsys):
    cfg = tiny_config()
    results = pipeline.run(cfg, str(tmp_path), precompile=True)
    methods = results["methods"]
    assert set(methods) == {"reference", "drift"}
    for m in methods.values():
        assert all(0.0 <= m[f"multi@{k}"] <= 1.0 for k in (1, 2)) and m["multi@1"] <= m["multi@2"]
    assert methods["drift"]["wall_seconds"] > 0 and methods["drift"]["tokens_generated"] > 0
    for name in ("results.json", "report.md", "report.png", "eval_drift.json", "reference/hf/config.json",
                 "reference/hf/tokenizer.json", "drift/hf/model.safetensors", "rollouts/rollouts-00001.arrayrecord"):
        assert os.path.exists(tmp_path / name), name
    assert json.loads((tmp_path / "results.json").read_text())["methods"] == methods
    # main's precompile compiled every stage on these devices before the first one ran.
    pre = json.loads((tmp_path / "preflight.json").read_text())
    assert {s["stage"] for s in pre["stages"]} == {"reference_train", "rollout_prefill", "rollout_decode", "train",
                                                   "eval_prefill", "eval_decode"}
    assert all(s["fits"] and s["memory_bytes_per_chip"] > 0 for s in pre["stages"])
    ev = json.loads((tmp_path / "eval_drift.json").read_text())
    assert len(ev["solved_turns"]) == 8
    capsys.readouterr()
    # A rerun does no work: every stage is cached, and the results are the same.
    again = pipeline.run(cfg, str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("cached") == 6 and again["methods"] == methods


def test_offline_baselines_share_the_rollouts(tmp_path, capsys):
    cfg = tiny_config()
    cfg.methods = ("reference", "drift", "sft_rollouts", "sft")  # rft: an untrained policy solves nothing
    methods = pipeline.run(cfg, str(tmp_path))["methods"]
    assert set(methods) == set(cfg.methods)
    out = capsys.readouterr().out
    assert out.count("[rollouts] done") == 1 and out.count("[rollouts] cached") == 1  # sampled once, reused
    assert "tokens_generated" not in methods["sft"] and methods["sft"]["tokens_trained"] > 0
    import numpy as np

    uniform = np.load(tmp_path / "sft_rollouts" / "weights.npy")
    assert np.all(uniform == 1.0)
    assert "| sft |" in (tmp_path / "report.md").read_text()


def test_rft_and_drift_data_from_crafted_rollouts(tmp_path):
    """rft keeps exactly the solved trajectories at weight 1; drift gives them most of the mass."""
    import numpy as np

    from drift_jax import envs
    from drift_jax.rollout import driver
    from drift_jax.train import batches

    chat = envs.ChatFormat.from_pretrained(envs.SYNTHETIC_TOKENIZER)
    eot, fb = chat.end_of_turn_id, chat.feedback_ids(envs.DEFAULT_FEEDBACK)
    ans = lambda text: chat.encode(text) + [eot]  # noqa: E731

    def record(pid, sample, answers, solved):
        turns = [{"response_ids": ans(f"<answer>{a}</answer>"), "answer": str(a), "format_ok": True,
                  "reward": float(i + 1 == solved), "feedback_ids": fb if i + 1 < len(answers) else []}
                 for i, a in enumerate(answers)]
        return {"problem_id": pid, "sample": sample, "prompt_ids": chat.prompt_ids([{"role": "user", "content": "q"}]),
                "turns": turns, "solved_turn": solved}

    recs = [record("p1", 0, [7], 1), record("p1", 1, [3, 7], 2), record("p1", 2, [3, 4], 0),
            record("p2", 0, [1, 2], 0), record("p2", 1, [1, 1], 0)]
    (tmp_path / "rollouts").mkdir()
    driver._write_shard(driver.shard_path(str(tmp_path / "rollouts"), 0), recs)
    cfg = tiny_config()
    cfg.drift.all_fail = "drop"
    summary = pipeline.stage_weights(cfg, str(tmp_path), str(envs.SYNTHETIC_TOKENIZER), name="rft")
    assert summary["examples"] == 2
    np.testing.assert_array_equal(np.load(tmp_path / "rft" / "weights.npy"), [1, 1, 0, 0, 0])
    pipeline.stage_weights(cfg, str(tmp_path), str(envs.SYNTHETIC_TOKENIZER), name="drift")
    w = np.load(tmp_path / "drift" / "weights.npy")
    assert w[0] > w[1] > w[2] and w[3] == w[4] == 0 and np.isclose(w[:3].mean(), 1.0, atol=1e-5)
    source = batches.ExampleSource(str(tmp_path / "rft" / "examples.arrayrecord"))
    scored = [chat.decode(source[i]["tokens"][source[i]["loss_mask"] == 1]) for i in range(len(source))]
    assert scored == ["<answer>7</answer>", "<answer>7</answer>"]  # terminal turn only


def test_online_rl_gets_a_budget_from_drift_and_a_curve_in_the_report(tmp_path):
    cfg = tiny_config()
    cfg.methods = ("reference", "drift", "online_rl")
    results = pipeline.run(cfg, str(tmp_path))
    orl, drift = results["methods"]["online_rl"], results["methods"]["drift"]
    assert orl["budget_seconds"] == pytest.approx(0.05 * drift["wall_seconds"])
    # It ran until the budget was spent (and stopped within 2x of it unless the curve still rose).
    assert orl["wall_seconds"] >= orl["budget_seconds"] and orl["iterations"] >= 1
    # The curve is measured on the dev split, never on the test problems: its first point is the
    # reference and its last the final policy, each evaluated here on dev.
    dev, test = stage_io.curve_problems(cfg), stage_io.eval_problems(cfg)
    assert len(dev) == cfg.eval.num_problems and not {p.id for p in dev} & {p.id for p in test}
    mesh = sharding.make_mesh(cfg.mesh.to_dict())

    def on_dev(path):
        model_config, params, chat = stage_io.load_policy(str(path), mesh, cfg)
        return held_out.evaluate(params, model_config, chat, dev, stage_io.episode_config(cfg, sample=False),
                                 mesh=mesh, rows_per_batch=cfg.eval.rows_per_batch,
                                 engine=stage_io.engine_config(cfg.eval))["multi@2"]

    assert orl["curve"][0] == [0.0, on_dev(tmp_path / "reference" / "hf")]
    assert orl["curve"][-1][1] == on_dev(tmp_path / "online_rl" / "hf")
    assert orl["tokens_generated"] > 0 and orl["tokens_trained"] > 0
    report_md = (tmp_path / "report.md").read_text()
    assert "| online_rl |" in report_md and "At DRIFT's wall time" in report_md and "on dev" in report_md
    assert os.path.exists(tmp_path / "online_rl" / "hf" / "model.safetensors")


def test_each_offline_method_trains_for_its_own_budget(tmp_path):
    cfg = tiny_config()
    cfg.methods = ("reference", "drift", "sft")
    cfg.budgets.sft = 3  # drift keeps train.epochs (1)
    methods = pipeline.run(cfg, str(tmp_path))["methods"]
    marker = lambda name: json.loads((tmp_path / "stages" / f"{name}.json").read_text())  # noqa: E731
    assert (methods["drift"]["epochs"], methods["sft"]["epochs"]) == (1, 3)
    assert marker("train_sft")["reads"]["train"]["epochs"] == 3 and marker("train_drift")["reads"]["train"]["epochs"] == 1
    for name in ("drift", "sft"):
        per_epoch = marker(f"train_{name}")["summary"]["scored_tokens_per_epoch"]
        assert methods[name]["tokens_trained"] == methods[name]["epochs"] * per_epoch
        assert methods[name]["optimizer_steps"] >= 1
    report_md = (tmp_path / "report.md").read_text()
    assert f"3 epochs, {methods['sft']['optimizer_steps']} steps" in report_md
    cfg.budgets.sft = 2  # only SFT's training (and its evaluation) are stale
    with pytest.raises(stages.StaleStageError, match="train_sft") as e:
        pipeline.run(cfg, str(tmp_path))
    assert "train_drift" not in str(e.value)
    cfg.budgets.bogus = 1
    with pytest.raises(validate.ConfigError, match="budgets.bogus"):
        pipeline.run(cfg, str(tmp_path))


def test_unknown_method(tmp_path):
    cfg = tiny_config()
    cfg.methods = ("reference", "ppo")
    with pytest.raises(validate.ConfigError, match=r"methods: unknown \['ppo'\]; available: reference, drift"):
        pipeline.run(cfg, str(tmp_path))
    assert not (tmp_path / "reference").exists()  # caught before the reference was trained


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


def test_missing_task_files_are_a_clear_error_before_any_stage(tmp_path):
    """The task files are the only thing wrong (the reference is trained from scratch on synthetic
    demonstrations, its tokenizer exists): the error names each file expected, and no stage ran."""
    cfg = tiny_config()
    cfg.task.update(name="math", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "missing"), knobs={})
    cfg.reference.task.name = "synthetic"
    with pytest.raises(validate.ConfigError) as e:
        pipeline.run(cfg, str(tmp_path / "work"))
    assert e.value.problems == [
        f"task: no {split} file for math: expected {tmp_path / 'missing' / 'math'}/{split}*.jsonl (or .json, .parquet, "
        ".csv; subfolders allowed), as exported from the HF hub dataset hendrycks/competition_math or "
        "EleutherAI/hendrycks_math. Nothing is downloaded at run time." for split in ("train", "test")]
    assert not (tmp_path / "work" / "stages").exists()
