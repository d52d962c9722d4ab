"""Tests for the command line drift_jax/evaluate.py, run as users run it, on an exported HF directory."""

import json
import os
import pathlib
import subprocess
import sys

import rollout_fixture as fx

from drift_jax import pipeline


def test_command_line(tmp_path):
    pipeline.save_policy(fx.CFG, fx.params(4), str(pipeline.envs.SYNTHETIC_TOKENIZER), str(tmp_path / "policy"))
    out = subprocess.run(
        [sys.executable, "-m", "drift_jax.evaluate", f"--policy={tmp_path / 'policy'}", "--num_problems=6",
         "--max_turns=2", "--max_new_tokens=4", "--rows_per_batch=8", "--mesh=data=-1",
         f"--out={tmp_path / 'eval.json'}"],
        capture_output=True, text=True, check=True, cwd=pathlib.Path(__file__).parents[1],
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["num_problems"] == 6 and set(line) == {"multi@1", "multi@2", "num_problems"}
    assert json.loads((tmp_path / "eval.json").read_text())["multi@2"] == line["multi@2"]
