"""The quickstart's claims, end to end, exactly as `bash launch/quickstart.sh` runs it (slow: ~10-15 minutes
for every method; `bash launch/test.sh -m slow`)."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_drift_against_reference_and_baselines(tmp_path):
    """Held-out multi@5: DRIFT at least 10 points above the reference and above SFT on the same rollouts
    with uniform weights; online RL ran with at least 4x DRIFT's wall time (README table). Not asserted,
    because it does not hold here: DRIFT within 2 points of online RL at that budget (README gives the
    numbers: online RL overtakes DRIFT after about 2x its wall time).

    Runs in a subprocess with the machine's real devices (one CPU device), not the suite's 8 fake ones:
    the device count changes float reduction order, hence the trained models, like another seed does
    (on 8 fake devices this config measured 34.0 -> 43.2). If this fails after a change, rerun
    `bash launch/quickstart.sh` and compare report.md with the README before touching the config."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_DEFAULT_MATMUL_PRECISION")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "drift_jax.main", "--config=configs/quickstart.py", f"--workdir={tmp_path}"],
                   cwd=root, env={**env, "PYTHONPATH": root}, check=True, stdout=subprocess.DEVNULL)
    methods = json.loads((tmp_path / "results.json").read_text())["methods"]
    drift = methods["drift"]
    assert drift["multi@5"] >= methods["reference"]["multi@5"] + 0.10, methods
    assert drift["multi@5"] > methods["sft_rollouts"]["multi@5"], methods
    assert methods["online_rl"]["wall_seconds"] >= 4 * drift["wall_seconds"], methods
