"""Bad inputs a user hits, each a clear error with every earlier output intact: the config checked before any
stage (API and `python -m drift_jax.main` / `drift_jax.evaluate`), broken task and tokenizer files, a NaN loss,
a corrupt rollout shard and checkpoint, a changed config on rerun, SIGTERM/SIGKILL mid-rollouts and mid-SFT,
a disk that fills. Slow variants (full resumes) are marked slow; each has a fast version here."""

import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags

from drift_jax import envs, main, pipeline, stages, validate  # noqa: F401  (main: the CLI's flags)
from drift_jax.lm import model, sharding
from drift_jax.rollout import driver
from drift_jax.train import batches, trainer, update
from tests.test_batches import make_examples
from tests.test_pipeline import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The CLI's precompile (every stage compiled before the first runs) is off here: these tests time signals
# to land mid-stage, and the preflight has its own tests.
NO_PRECOMPILE = ["--noprecompile"] if "precompile" in flags.FLAGS else []
# The run the fixture completes: 24 rollout shards and ~20 SFT steps, so a signal can land mid-stage.
TINY = {"rollout": {"num_problems": 48, "problems_per_shard": 2}, "train": {"epochs": 4, "save_every": 2}}
CONFIG_FILE = """
import sys
sys.path.insert(0, {root!r})
from tests.test_pipeline import tiny_config
def get_config(arg=None):
    c = tiny_config()
    for section, values in {tiny!r}.items():
        c[section].update(values)
    return c
"""


def tiny():
    c = tiny_config()
    for section, values in TINY.items():
        c[section].update(values)
    return c


def _snapshot(workdir, *under) -> dict[str, str]:
    """sha256 of every file under the given paths of the workdir, hidden ones (a rollout shard's seconds) aside."""
    out = {}
    for rel in under:
        root = os.path.join(workdir, rel)
        files = [root] if os.path.isfile(root) else [
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if not f.startswith(".")]
        for f in files:
            out[os.path.relpath(f, workdir)] = hashlib.sha256(open(f, "rb").read()).hexdigest()
    return out


EARLIER = ("reference", "stages/reference.json", "eval_reference.json")  # outputs no later failure may touch
OUTPUTS = ("stages", "reference", "rollouts", "drift", "eval_reference.json", "eval_drift.json", "results.json")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished reference + DRIFT run, and the digests of all its files."""
    workdir = str(tmp_path_factory.mktemp("done") / "run")
    pipeline.run(tiny(), workdir)
    return workdir, _snapshot(workdir, ".")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.py"
    path.write_text(CONFIG_FILE.format(root=str(ROOT), tiny=TINY))
    return str(path)


def _forgotten(forget) -> set[str]:
    outputs = {s.name: s.outputs + s.work for s in pipeline.plan(tiny())}
    return {rel for name in forget for rel in (f"stages/{name}.json", *outputs[name])}


def _copy(done, dest, forget=()) -> str:
    """A copy of the finished run in dest/run, with the stages in `forget` (and their outputs) as if never run."""
    skip = _forgotten(forget)
    workdir = str(dest / "run")
    shutil.copytree(done[0], workdir, ignore=lambda d, names: [
        n for n in names if os.path.relpath(os.path.join(d, n), done[0]) in skip])
    return workdir


def _main(config_file, workdir, *flags, module="drift_jax.main", popen=False):
    run = [f"--config={config_file}", f"--workdir={workdir}", *NO_PRECOMPILE] if config_file else []
    args = [sys.executable, "-m", module, *run, *flags]
    kw = dict(cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              text=True)
    return subprocess.Popen(args, **kw) if popen else subprocess.run(args, timeout=300, **kw)


def _assert_clean_exit(proc, *needles):
    """Exit status 1 with the message on stderr and no traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-3000:])


# ----------------------------------------------------------------------------- the config, checked before any stage


def _tokenizer_copy(tmp_path, **changes) -> str:
    path = tmp_path / "tok"
    shutil.copytree(envs.SYNTHETIC_TOKENIZER, path)
    for name, text in changes.items():
        if text is None:
            (path / name).unlink()
        else:
            (path / name).write_text(text)
    return str(path)


def _task_file(tmp_path, text: str, split="train") -> str:
    (tmp_path / "tasks" / "math").mkdir(parents=True, exist_ok=True)
    (tmp_path / "tasks" / "math" / f"{split}.jsonl").write_text(text)
    return str(tmp_path / "tasks")


def _math_task(c, manual_dir):
    c.task.update(name="math", manual_dir=manual_dir, knobs={})
    c.reference.task.name = "synthetic"
    c.eval.task = dict(name="synthetic", data_dir="", manual_dir="", knobs=dict(num_operands=2))


ROW = '{"problem": "What is 1+1?", "solution": "\\\\boxed{2}"}\n'
BAD_CONFIGS = {
    "beta_zero": (lambda c, t: c.drift.update(beta=0.0), ["drift.beta=0.0: must be > 0 (the weights are exp(R/beta)/Z)"]),
    "beta_negative": (lambda c, t: c.drift.update(beta=-0.1), ["drift.beta=-0.1: must be > 0"]),
    "unknown_method": (lambda c, t: c.update(methods=("reference", "drfit")), ["methods: unknown ['drfit']"]),
    "unknown_task": (lambda c, t: c.task.update(name="mathh"), ["task: unknown task 'mathh'"]),
    "mesh_does_not_divide": (lambda c, t: c.mesh.update(data=3),
                             ["the fixed axes multiply to 6, which does not equal the 8 available devices"]),
    "batch_vs_data_x_fsdp": (lambda c, t: c.train.update(batch_size=6),
                             ["train.batch_size: a batch of 6 rows does not divide over the data x fsdp = 4 devices"]),
    "top_p_out_of_range": (lambda c, t: c.rollout.update(top_p=1.5), ["rollout.top_p=1.5: must be in (0, 1]"]),
    "greedy_rollouts": (lambda c, t: c.rollout.update(temperature=0.0), ["rollout.temperature=0.0: must be > 0"]),
    "gamma_above_one": (lambda c, t: c.returns.update(gamma=1.5), ["returns.gamma=1.5: must be in (0, 1]"]),
    "typo_in_train_section": (lambda c, t: c.train.update(lrr=1e-3), ["train: unknown fields ['lrr']"]),
    "episode_past_the_positions": (lambda c, t: c.update(max_new_tokens=600),
                                   ["an episode reaches", "past the model's max_position_embeddings=1024"]),
    "online_rl_tempered": (lambda c, t: (c.update(methods=("reference", "online_rl")), c.rollout.update(top_p=0.9)),
                           ["online_rl samples from the policy itself: rollout.temperature must be 1"]),
    "missing_tokenizer_files": (lambda c, t: c.model.update(tokenizer_path=_tokenizer_copy(t, **{"tokenizer.json": None})),
                                ["model.tokenizer_path:", "lacks tokenizer.json"]),
    "template_without_generation_prompt": (
        lambda c, t: c.model.update(tokenizer_path=_tokenizer_copy(t, **{"chat_template.jinja": (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")})),
        ["chat template has no generation prompt"]),
    "hf_path_missing": (lambda c, t: c.model.update(hf_path=str(t / "nowhere")), ["model.hf_path:", "is not a directory"]),
    "hf_path_unsupported_architecture": (
        lambda c, t: ((t / "gpt2").mkdir(), (t / "gpt2" / "config.json").write_text(json.dumps(
            {"architectures": ["GPT2LMHeadModel"]})), c.model.update(hf_path=str(t / "gpt2"))),
        ["unsupported architecture ['GPT2LMHeadModel']", "neither model.safetensors nor"]),
    "task_file_missing": (lambda c, t: _math_task(c, str(t / "none")), ["no train file for math: expected"]),
    "task_file_malformed": (lambda c, t: _math_task(c, _task_file(t, ROW + '{"problem": "2+2?", \n')),
                            ["math/train.jsonl: line 2: invalid JSON"]),
    "task_file_empty": (lambda c, t: _math_task(c, _task_file(t, "")), ["math/train: no problems left in"]),
    "task_file_missing_field": (lambda c, t: _math_task(c, _task_file(t, ROW + '{"problem": "2+2?"}\n')),
                                ["math/train.jsonl: line 2: field 'solution' must be a non-empty string, found missing"]),
    "over_long_prompt": (lambda c, t: _math_task(c, _task_file(t, ROW + json.dumps(
        {"problem": "What is " + " + ".join(["1"] * 200) + "?", "solution": "\\boxed{200}"}) + "\n")),
                         ["has 8", "tokens; prompt + one turn of max_new_tokens=8 exceeds train.seq_len=96"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_caught_before_any_stage(case, tmp_path):
    mutate, needles = BAD_CONFIGS[case]
    cfg = tiny()
    mutate(cfg, tmp_path)
    with pytest.raises(validate.ConfigError) as e:
        pipeline.run(cfg, str(tmp_path / "work"))
    for needle in needles:
        assert any(needle in line for line in e.value.problems), (needle, e.value.problems)
    assert all("\n" not in line for line in e.value.problems)  # one line each
    assert not (tmp_path / "work" / "stages").exists()  # nothing ran


def test_every_problem_is_listed_at_once(tmp_path):
    cfg = tiny()
    cfg.drift.beta, cfg.mesh.data, cfg.rollout.top_p = 0.0, 3, 1.5
    with pytest.raises(validate.ConfigError) as e:
        pipeline.run(cfg, str(tmp_path))
    assert len(e.value.problems) == 3 and str(e.value).startswith("3 problem(s) with the config (nothing was run):")


def test_cli_bad_config_exits_with_every_problem_and_no_traceback(tmp_path, config_file):
    proc = _main(config_file, tmp_path / "w", "--config.drift.beta=0", "--config.mesh.data=3")
    _assert_clean_exit(proc, "error: 2 problem(s) with the config (nothing was run):",
                       "  - drift.beta=0.0: must be > 0", "does not equal the 8 available devices")
    assert not (tmp_path / "w" / "stages").exists()


def test_evaluate_cli_checks_its_inputs(tmp_path):
    proc = _main(None, None, f"--policy={tmp_path / 'nope'}", "--task=gsm8k", "--max_turns=0",
                 module="drift_jax.evaluate")
    _assert_clean_exit(proc, "error: 3 problem(s)", "max_turns=0: must be an integer >= 1", "policy: ",
                       "task gsm8k reads local files: set its manual_dir")


# ----------------------------------------------------------------------------- a changed config on rerun


def test_changed_config_on_rerun_stops_and_lists_what_it_invalidates(done, tmp_path, config_file):
    workdir = _copy(done, tmp_path)
    beta = tiny_config().drift.beta  # the finished run's (the quickstart's tuned value)
    proc = _main(config_file, workdir, "--config.drift.beta=0.3")
    _assert_clean_exit(proc, "invalidated: weights, train_drift, eval_drift", f"  weights: drift.beta: {beta} -> 0.3",
                       "  train_drift: its input weights is recomputed", "--on_change=recompute")
    assert _snapshot(workdir, *OUTPUTS) == {k: v for k, v in done[1].items() if k.startswith(OUTPUTS)}
    configs = sorted(os.listdir(os.path.join(workdir, "run_configs")))  # each run's config kept, none overwritten
    assert len(configs) == 2 and [json.load(open(os.path.join(workdir, "run_configs", c)))["drift"]["beta"]
                                  for c in configs] == [beta, 0.3]


def test_corrected_hf_path_never_reuses_the_old_reference(done, tmp_path):
    """The issue's case: fixing --config.model.hf_path in the same workdir invalidates every stage."""
    workdir = _copy(done, tmp_path)
    shutil.copytree(os.path.join(workdir, "reference", "hf"), tmp_path / "other_policy")
    cfg = tiny()
    cfg.model.hf_path = str(tmp_path / "other_policy")
    with pytest.raises(stages.StaleStageError, match=r'reference: model.hf_path: "" -> ".*other_policy"\n') as e:
        pipeline.run(cfg, workdir)
    assert "invalidated: reference, eval_reference, rollouts, weights, train_drift, eval_drift" in str(e.value)


@pytest.mark.slow
def test_changed_config_recomputes_only_what_it_invalidates(done, tmp_path):
    workdir = _copy(done, tmp_path)
    cfg = tiny()
    cfg.drift.beta = 0.3
    pipeline.run(cfg, workdir, on_change="recompute")
    unchanged = ("reference", "rollouts", "stages/reference.json", "stages/rollouts.json", "eval_reference.json")
    assert _snapshot(workdir, *unchanged) == {k: v for k, v in done[1].items() if k.startswith(unchanged)}
    replaced = os.listdir(os.path.join(workdir, "replaced"))
    assert len(replaced) == 1 and _snapshot(os.path.join(workdir, "replaced", replaced[0]), "drift/weights.npy") == {
        "drift/weights.npy": done[1]["drift/weights.npy"]}  # the old outputs kept, not deleted
    assert json.load(open(os.path.join(workdir, "stages", "weights.json")))["reads"]["drift"]["beta"] == 0.3


# ----------------------------------------------------------------------------- corrupt files


def test_corrupted_rollout_shard_is_detected_and_nothing_touched(done, tmp_path):
    workdir = _copy(done, tmp_path)
    shard = os.path.join(workdir, "rollouts", "rollouts-00003.arrayrecord")
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    before = _snapshot(workdir, *OUTPUTS)
    with pytest.raises(stages.StaleStageError, match=r"rollouts: its outputs changed on disk since it ran \(rollouts\)"):
        pipeline.run(tiny(), workdir)
    assert _snapshot(workdir, *OUTPUTS) == before


@pytest.mark.slow
def test_corrupted_rollout_shard_recomputed_identically(done, tmp_path):
    workdir = _copy(done, tmp_path)
    shard = os.path.join(workdir, "rollouts", "rollouts-00003.arrayrecord")
    open(shard, "r+b").write(b"garbage")
    pipeline.run(tiny(), workdir, on_change="recompute")
    assert _snapshot(workdir, "rollouts") == {k: v for k, v in done[1].items() if k.startswith("rollouts/")}


def _train(workdir, examples, **kw):  # a tiny SFT run on 4 devices
    cfg = model.ModelConfig(vocab_size=61, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                            mlp_dim=48)
    tc = update.TrainConfig(**{**dict(lr=1e-2, warmup_steps=0, batch_size=4, seq_len=40, epochs=1, save_every=1,
                                       progress_bar=False, async_checkpoints=False), **kw})
    return trainer.run(tc, cfg, examples, lambda: model.init_params(cfg, jax.random.key(0)), workdir,
                       sharding.make_mesh({"data": 4}, jax.devices()[:4]))


@pytest.mark.slow  # CI: tests/test_trainer.py::test_run_logs_and_nan_stops_without_overwriting_checkpoint
def test_nan_loss_stops_with_the_last_good_checkpoint_intact(tmp_path):
    examples = str(tmp_path / "examples.arrayrecord")
    batches.write_examples(examples, make_examples(48))
    with pytest.raises(trainer.NonFiniteLossError, match=r"loss is nan at step \d+ .*stopped without saving. The last "
                                                         r"good checkpoint is step \d+ in") as e:
        _train(str(tmp_path / "t"), examples, lr=1e30)  # the first updates blow the params up
    bad, good = map(int, re.findall(r"step (\d+)", str(e.value)))
    assert good == bad - 1
    metrics = [json.loads(line) for line in open(tmp_path / "t" / "metrics.jsonl")]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    steps = sorted(int(p) for p in os.listdir(tmp_path / "t" / "checkpoints") if p.isdigit())
    assert steps == [m["step"] for m in metrics][-len(steps):]  # only checked, finite states were saved


def test_corrupted_latest_checkpoint_falls_back_and_is_kept_aside(tmp_path, caplog):
    from drift_jax.train import checkpoint

    state = {"w": np.arange(12.0, dtype=np.float32).reshape(3, 4)}
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", async_save=False)
    for step in (2, 4):
        ckpt.save(step, jax.tree.map(lambda x: x * step, state), {"step": step})
    ckpt.close()
    for d, _, fs in os.walk(tmp_path / "ckpt" / "4"):
        for f in fs:
            open(os.path.join(d, f), "wb").write(b"\0garbage")
    target = {"w": jax.ShapeDtypeStruct((3, 4), np.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
    with caplog.at_level(logging.WARNING):
        step, restored, data = checkpoint.Checkpointer(tmp_path / "ckpt").restore_latest(target)
    assert step == 2 and data == {"step": 2} and np.array_equal(restored["w"], state["w"] * 2)
    assert "checkpoint at step 4" in caplog.text and "unreadable" in caplog.text
    aside = [p for p in os.listdir(tmp_path) if p.startswith("unreadable_checkpoint_4_")]
    assert len(aside) == 1 and os.listdir(tmp_path / aside[0])  # moved, with its files, not deleted


@pytest.mark.slow
def test_corrupted_latest_checkpoint_is_quarantined_and_retrained(tmp_path, caplog):
    examples = str(tmp_path / "examples.arrayrecord")
    batches.write_examples(examples, make_examples(24))
    _train(str(tmp_path / "t"), examples, save_every=2)
    ckpt = tmp_path / "t" / "checkpoints"
    latest = max(int(p) for p in os.listdir(ckpt) if p.isdigit())
    losses = {json.loads(line)["step"]: json.loads(line)["loss"] for line in open(tmp_path / "t" / "metrics.jsonl")}
    for d, _, fs in os.walk(ckpt / str(latest)):
        for f in fs:
            open(os.path.join(d, f), "wb").write(b"\0garbage")
    with caplog.at_level(logging.WARNING):
        _train(str(tmp_path / "t"), examples, save_every=2)
    assert f"checkpoint at step {latest} in {ckpt} is unreadable" in caplog.text
    assert [p for p in os.listdir(tmp_path / "t") if p.startswith(f"unreadable_checkpoint_{latest}_")]
    again = {json.loads(line)["step"]: json.loads(line)["loss"] for line in open(tmp_path / "t" / "metrics.jsonl")}
    assert again == pytest.approx(losses, abs=1e-6)  # the lost steps were retrained exactly


@pytest.mark.slow  # the fast version: tests/test_checkpoint.py::test_shape_mismatch_is_raised_with_expected_and_found...
def test_checkpoint_of_another_model_is_raised_not_quarantined(tmp_path):
    examples = str(tmp_path / "examples.arrayrecord")
    batches.write_examples(examples, make_examples(24))
    _train(str(tmp_path / "t"), examples, max_steps=1)
    from drift_jax.train import checkpoint

    with pytest.raises(checkpoint.CheckpointMismatchError, match="expected .* found"):
        trainer.run(update.TrainConfig(lr=1e-2, batch_size=4, seq_len=40, progress_bar=False), model.ModelConfig(
            vocab_size=61, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=48),
            examples, None, str(tmp_path / "t"), sharding.make_mesh({"data": 4}, jax.devices()[:4]))
    assert os.listdir(tmp_path / "t" / "checkpoints") == ["1"]


# ----------------------------------------------------------------------------- signals


def _shards(workdir):
    d = os.path.join(workdir, "rollouts")
    return [f for f in os.listdir(d) if f.endswith(".arrayrecord")] if os.path.isdir(d) else []


ROLLOUT_STAGES = ("rollouts", "weights", "train_drift", "eval_drift")


def _signal_when(config_file, workdir, ready, sig) -> tuple[int, str]:
    """Runs the CLI on workdir and sends `sig` once `ready()`; (exit status, stderr)."""
    proc = _main(config_file, workdir, popen=True)
    deadline = time.time() + 240
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"ended before the signal: {proc.communicate()[1][-2000:]}"
    proc.send_signal(sig)
    return proc.wait(timeout=120), proc.stderr.read()


def _sft_steps(workdir) -> int:
    metrics = os.path.join(workdir, "drift", "train", "metrics.jsonl")
    return len(open(metrics).readlines()) if os.path.exists(metrics) else 0


def _losses(workdir) -> dict[int, float]:
    lines = [json.loads(line) for line in open(os.path.join(workdir, "drift", "train", "metrics.jsonl"))]
    return {m["step"]: m["loss"] for m in lines}


def _check_mid_rollouts(done, workdir, status, err, sig):
    written = _shards(workdir)
    assert 1 <= len(written) < 24, written  # stopped mid-rollouts
    assert status == (1 if sig == signal.SIGTERM else -signal.SIGKILL), err[-2000:]
    if sig == signal.SIGTERM:
        assert "error: SIGTERM during stage rollouts: stopped without marking it done" in err
    assert not os.path.exists(os.path.join(workdir, "stages", "rollouts.json"))
    # Nothing lost: earlier stages untouched; the written shards are the uninterrupted run's.
    assert _snapshot(workdir, *EARLIER) == {k: v for k, v in done[1].items() if k.startswith(EARLIER)}
    assert {k: v for k, v in _snapshot(workdir, "rollouts").items() if ".tmp" not in k} == {
        f"rollouts/{f}": done[1][f"rollouts/{f}"] for f in written}


def _check_mid_sft(done, workdir, status, err, sig):
    assert status == (1 if sig == signal.SIGTERM else -signal.SIGKILL), err[-2000:]
    saved = [int(p) for p in os.listdir(os.path.join(workdir, "drift", "train", "checkpoints")) if p.isdigit()]
    if sig == signal.SIGTERM:  # saved at the step it stopped at, then stopped the run
        assert "error: SIGTERM during stage train_drift: stopped without marking it done" in err
        assert saved and max(saved) == max(_losses(workdir))
    assert 0 < max(_losses(workdir)) < max(_losses(done[0]))  # mid-SFT
    assert not os.path.exists(os.path.join(workdir, "stages", "train_drift.json"))  # a stopped SFT is never done
    assert not os.path.exists(os.path.join(workdir, "drift", "hf"))
    # The rollouts (resumed after the first signal) and the weights are the uninterrupted run's: the same
    # bytes, except the resumed shards' log-probs, equal to float rounding (the rows left after the resume
    # decode at other row widths as the stage drains, and XLA:CPU's matmuls round by shape).
    kept = ("reference", "drift/examples.arrayrecord", "drift/weights.npy")
    assert _snapshot(workdir, *kept) == {k: v for k, v in done[1].items() if k.startswith(kept)}
    # (a shard the first signal cut mid-write stays as an unread rollouts-*.tmp-PID file)
    assert {k for k in _snapshot(workdir, "rollouts") if ".tmp-" not in k} == {k for k in done[1] if k.startswith("rollouts")}
    from tests.test_driver import _assert_same  # noqa: PLC0415

    _assert_same(driver.read_rollouts(os.path.join(workdir, "rollouts")), driver.read_rollouts(os.path.join(done[0], "rollouts")))
    assert os.path.exists(os.path.join(workdir, "stages", "weights.json"))


# Slow: SIGKILL then SIGTERM (SIGTERM then SIGKILL, the other order of the same two resumes, runs in CI).
@pytest.mark.parametrize("first,second,finish", [
    pytest.param(signal.SIGKILL, signal.SIGTERM, False, marks=pytest.mark.slow), (signal.SIGTERM, signal.SIGKILL, False),
    pytest.param(signal.SIGKILL, signal.SIGTERM, True, marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, signal.SIGKILL, True, marks=pytest.mark.slow)])
def test_signals_mid_rollouts_then_mid_sft(done, tmp_path, config_file, first, second, finish):
    """One signal mid-rollouts; the rerun resumes them, and a second signal lands mid-SFT; (slow) a last
    rerun finishes with the uninterrupted run's SFT losses."""
    workdir = _copy(done, tmp_path, forget=ROLLOUT_STAGES)
    status, err = _signal_when(config_file, workdir, lambda: _shards(workdir), first)
    _check_mid_rollouts(done, workdir, status, err, first)
    status, err = _signal_when(config_file, workdir, lambda: _sft_steps(workdir) >= 3, second)
    _check_mid_sft(done, workdir, status, err, second)
    if finish:
        pipeline.run(tiny(), workdir)
        assert _losses(workdir) == pytest.approx(_losses(done[0]), abs=1e-5)
        assert os.path.exists(os.path.join(workdir, "stages", "eval_drift.json"))


# ----------------------------------------------------------------------------- a disk that fills


def _small_disk(path: pathlib.Path, size_kb: int):
    """A tmpfs of size_kb if we may mount one; else None (the caller limits file sizes instead)."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    return path if ok else None


def test_full_disk_stops_the_stage_with_earlier_outputs_intact(done, tmp_path, config_file):
    skip = _forgotten(("train_drift", "eval_drift"))
    kept = [os.path.join(d, f) for d, _, fs in os.walk(done[0]) for f in fs
            if not any(os.path.relpath(os.path.join(d, f), done[0]).startswith(p) for p in skip)]
    used_kb = sum(-(-os.path.getsize(f) // 4096) * 4 for f in kept) + 4 * len(kept)
    disk = _small_disk(tmp_path / "disk", used_kb + 96)  # room for the copy and a little more, not for SFT
    try:
        workdir = _copy(done, disk or tmp_path / "disk", forget=("train_drift", "eval_drift"))
        limit = [] if disk else ["-c", "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, "
                                       "signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768)); "
                                       "sys.argv[0] = 'main'; runpy.run_module('drift_jax.main', run_name='__main__')"]
        args = [sys.executable, *(limit or ["-m", "drift_jax.main"]), f"--config={config_file}", f"--workdir={workdir}",
                *NO_PRECOMPILE]
        proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode != 0
        assert "No space left on device" in proc.stderr or "File too large" in proc.stderr, proc.stderr[-3000:]
        assert not os.path.exists(os.path.join(workdir, "stages", "train_drift.json"))
        kept = ("reference", "rollouts", "drift/examples.arrayrecord", "stages/weights.json")
        assert _snapshot(workdir, *kept) == {k: v for k, v in done[1].items() if k.startswith(kept)}
    finally:
        if disk:
            subprocess.run(["umount", str(disk)], check=False)
