"""Tests for the command line drift_jax/evaluate.py, run as users run it, on an exported HF directory."""

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import rollout_fixture as fx

from configs import quickstart
from drift_jax import evaluate, stage_io

ROOT = pathlib.Path(__file__).parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drift_jax.evaluate", *args, "--rows_per_batch=8", "--mesh=data=-1"],
                          capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _run_config(seed: int = 3, num_problems: int = 6) -> ml_collections.ConfigDict:
    """The quickstart's config (max of four numbers, not the synthetic defaults) as a run keeps it."""
    c = quickstart.get_config()
    c.seed, c.eval.num_problems, c.max_turns, c.max_new_tokens = seed, num_problems, 2, 4
    return c


def _keep(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> ml_collections.ConfigDict:
    (workdir / "run_configs").mkdir(parents=True)
    (workdir / "run_configs" / "20260101-000000-1.json").write_text(cfg.to_json_best_effort(indent=2))
    return evaluate.run_config(str(workdir))


def test_command_line(tmp_path):
    stage_io.save_policy(fx.CFG, fx.params(4), str(stage_io.envs.SYNTHETIC_TOKENIZER), str(tmp_path / "policy"))
    out = _cli(f"--policy={tmp_path / 'policy'}", "--num_problems=6", "--max_turns=2", "--max_new_tokens=4",
               f"--out={tmp_path / 'eval.json'}")
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["num_problems"] == 6 and set(line) == {"multi@1", "multi@2", "num_problems"}
    full = json.loads((tmp_path / "eval.json").read_text())
    assert full["multi@2"] == line["multi@2"]
    assert full["task"] == {"name": "synthetic", "knobs": {"modulus": 5}, "split": "test", "seed": 0, "run": None}
    assert "a+b mod 5" in out.stderr  # no run found: the defaults are named, not silently used


def test_a_runs_policy_is_evaluated_on_the_runs_eval_problems(tmp_path):
    """The issue's defect: the command line used `a+b mod 5` whatever the run's task. A policy under a
    pipeline workdir now gets exactly the problems of the pipeline's eval_<method>.json."""
    cfg = _run_config()
    _keep(cfg, tmp_path / "run")
    stage_io.save_policy(fx.CFG, fx.params(4), str(stage_io.envs.SYNTHETIC_TOKENIZER), str(tmp_path / "run" / "drift" / "hf"))
    _cli(f"--policy={tmp_path / 'run' / 'drift' / 'hf'}", f"--out={tmp_path / 'eval.json'}")
    full = json.loads((tmp_path / "eval.json").read_text())
    want = stage_io.eval_problems(cfg)
    assert full["problem_ids"] == [p.id for p in want] and want[0].question.startswith("max ")
    assert len(want[0].question.split()) == 5  # four operands, from the run's knobs
    assert full["task"]["knobs"]["ops"] == ["max"] and full["task"]["seed"] == 3 and set(full) >= {"multi@2"}


def test_flags_over_the_run(tmp_path):
    cfg = _run_config(seed=1, num_problems=20)
    run = _keep(cfg, tmp_path)
    assert evaluate.find_run(str(tmp_path / "drift" / "hf")) == str(tmp_path)
    assert evaluate.find_run(str(tmp_path.parent)) is None
    same = stage_io.eval_problems(evaluate.eval_config(run, {}))
    assert same == stage_io.eval_problems(cfg)
    # --task=synthetic names the run's task: its knobs stay
    assert stage_io.eval_problems(evaluate.eval_config(run, {"task": "synthetic"})) == same
    dev = stage_io.eval_problems(evaluate.eval_config(run, {"split": "dev"}))
    assert len(dev) == 20 and not {p.id for p in dev} & {p.id for p in same}
    assert all(len(p.question.split()) == 5 for p in dev)
    other = evaluate.eval_config(run, {"task_knobs": {"num_operands": 3, "ops": ["max"], "modulus": 0}})
    assert all(len(p.question.split()) == 4 for p in stage_io.eval_problems(other))
    bare = evaluate.eval_config(None, {"task": "synthetic", "split": "test", "num_problems": 0, "data_dir": "",
                                       "max_turns": 5, "max_new_tokens": 8, "feedback": "No."})
    problems = stage_io.eval_problems(bare)
    assert len(problems) == 500 and problems == stage_io.envs.synthetic.make_problems("test", 500)


def test_the_checks_use_the_runs_knobs_and_seed(tmp_path):
    """check_evaluate makes the problems the command will evaluate (the run's knobs and seed), not the
    synthetic defaults: an episode that only the run's long questions overflow is caught."""
    import pytest

    from drift_jax import validate

    short = fx.CFG.replace(max_position_embeddings=256)
    stage_io.save_policy(short, fx.params(4), str(stage_io.envs.SYNTHETIC_TOKENIZER), str(tmp_path / "policy"))
    kw = dict(policy=str(tmp_path / "policy"), task="synthetic", split="test", num_problems=6, manual_dir=None,
              max_turns=2, max_new_tokens=4, feedback="Incorrect.", rows_per_batch=8, dtype=None, mesh={"data": -1})
    validate.check_evaluate(**kw, seed=3)  # a+b mod 5: short questions fit
    long_questions = {"num_operands": 100, "max_digits": 2, "ops": ["max"], "modulus": 0}
    with pytest.raises(validate.ConfigError, match="past the model's max_position_embeddings=256"):
        validate.check_evaluate(**kw, knobs=long_questions, seed=3)
