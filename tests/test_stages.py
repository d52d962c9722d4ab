"""Stage markers keyed by the config they read and their inputs' digests: no stale stage is ever reused."""

import json
import os

import pytest

from drift_jax.runtime import clock
from drift_jax.stages import Stage, Stages, StaleStageError, digest


def _plan(beta=0.1, samples=4):
    return [Stage("rollouts", {"rollout.num_samples": samples}, outputs=("rollouts",)),
            Stage("weights", {"drift.beta": beta}, ("rollouts",), ("drift/examples.txt",)),
            Stage("train", {"train.lr": 0.1}, ("weights",), ("drift/hf",), work=("drift/ckpt",))]


def _write(workdir, rel, text):
    path = os.path.join(workdir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _run_all(workdir, plan, on_change="error", calls=None):
    calls = [] if calls is None else calls
    stages = Stages(str(workdir), plan, on_change)
    beta, samples = plan[1].reads["drift.beta"], plan[0].reads["rollout.num_samples"]

    def step(name, fn):
        return stages.run(name, lambda: (calls.append(name), fn())[1])

    step("rollouts", lambda: (_write(workdir, "rollouts/shard-0", f"K={samples}"), {})[1])
    step("weights", lambda: (_write(workdir, "drift/examples.txt", f"beta={beta}"), {})[1])
    step("train", lambda: (_write(workdir, "drift/hf/model", "trained"), _write(workdir, "drift/ckpt/1", "c"), {})[2])
    return calls


def test_unchanged_rerun_reuses_every_stage(tmp_path):
    assert _run_all(tmp_path, _plan()) == ["rollouts", "weights", "train"]
    assert _run_all(tmp_path, _plan()) == []


def test_changed_value_stops_listing_the_change_and_everything_downstream(tmp_path):
    _run_all(tmp_path, _plan())
    before = {p: open(os.path.join(tmp_path, p)).read() for p in ("rollouts/shard-0", "drift/examples.txt")}
    with pytest.raises(StaleStageError) as e:
        _run_all(tmp_path, _plan(beta=0.3))
    message = str(e.value)
    assert "invalidated: weights, train" in message
    assert "  weights: drift.beta: 0.1 -> 0.3" in message and "  train: its input weights is recomputed" in message
    assert "rollouts:" not in message and "--on_change=recompute" in message
    assert before == {p: open(os.path.join(tmp_path, p)).read() for p in before}  # nothing touched


def test_recompute_moves_the_invalid_stages_aside_and_reruns_them(tmp_path):
    _run_all(tmp_path, _plan())
    assert _run_all(tmp_path, _plan(beta=0.3), on_change="recompute") == ["weights", "train"]
    assert open(tmp_path / "drift/examples.txt").read() == "beta=0.3"
    replaced = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "replaced") for f in fs]
    assert {os.path.relpath(p, tmp_path / "replaced").split(os.sep, 1)[1] for p in replaced} == {
        "stages/weights.json", "stages/train.json", "drift/examples.txt", "drift/hf/model", "drift/ckpt/1"}
    assert _run_all(tmp_path, _plan(beta=0.3)) == []  # and the new markers are reused


def test_an_upstream_change_invalidates_the_whole_chain(tmp_path):
    _run_all(tmp_path, _plan())
    with pytest.raises(StaleStageError, match=r"invalidated: rollouts, weights, train\n.*rollout.num_samples: 4 -> 8"):
        _run_all(tmp_path, _plan(samples=8))


def test_outputs_changed_on_disk_are_detected(tmp_path):
    _run_all(tmp_path, _plan())
    _write(tmp_path, "rollouts/shard-0", "corrupted")
    with pytest.raises(StaleStageError, match=r"rollouts: its outputs changed on disk since it ran \(rollouts\)"):
        _run_all(tmp_path, _plan())


def test_an_interrupted_attempt_resumes_only_under_the_same_config(tmp_path):
    """A stage without a marker keeps its partial outputs (resume) only if they were made with this config."""
    plan = _plan()
    stages = Stages(str(tmp_path), plan)
    stages.run("rollouts", lambda: (_write(tmp_path, "rollouts/shard-0", "K=4"), {})[1])
    with pytest.raises(KeyboardInterrupt):  # killed mid-stage: its started record and partial output remain
        stages.run("weights", lambda: (_write(tmp_path, "drift/examples.txt", "partial"), (_ for _ in ()).throw(
            KeyboardInterrupt()))[1])
    assert json.load(open(tmp_path / "stages/weights.started.json"))["reads"] == {"drift.beta": 0.1}
    with pytest.raises(StaleStageError, match="weights: an interrupted attempt: drift.beta: 0.1 -> 0.2"):
        Stages(str(tmp_path), _plan(beta=0.2))
    Stages(str(tmp_path), plan)  # the same config: no complaint, the partial output stays for the resume
    assert open(tmp_path / "drift/examples.txt").read() == "partial"


def test_digest_reads_contents(tmp_path):
    _write(tmp_path, "a/x", "1")
    first = digest(("a",), str(tmp_path))
    _write(tmp_path, "a/x", "2")
    assert digest(("a",), str(tmp_path)) != first


def test_a_resumed_stage_reports_the_seconds_its_earlier_attempts_saved(tmp_path, monkeypatch):
    """A stage's seconds: this attempt's plus the newest save's restored seconds (the largest: a later save
    holds the earlier ones), not the last attempt's alone; nested clocks are the stage's."""
    now = [1000.0]
    monkeypatch.setattr(clock, "_now", lambda: now[0])
    stages = Stages(str(tmp_path), _plan())

    def resume_and_work():
        work = clock.current()
        work.resumed(40.0)  # e.g. rollout shards written 40 s into an earlier attempt
        work.resumed(25.0)  # an older save restores nothing more
        work.resumed(None)  # a save made before seconds were stored
        now[0] += 7.0
        return {}

    summary = stages.run("rollouts", resume_and_work)
    assert summary["seconds"] == 47.0 and summary["resumed_seconds"] == 40.0
    summary = stages.run("weights", lambda: (now.__setitem__(0, now[0] + 3.0), {})[1])
    assert summary["seconds"] == 3.0 and "resumed_seconds" not in summary
    outside = clock.current()  # outside a stage: a clock of its own, from now
    now[0] += 2.0
    assert outside.elapsed() == 2.0
