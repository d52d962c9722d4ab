"""The quickstart's claims, end to end, exactly as `bash launch/quickstart.sh` runs it (slow: ~10-15 minutes
for every method; `bash launch/test.sh -m slow`)."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_drift_against_reference_and_baselines(tmp_path):
    """Held-out multi@5 (issue bars; README table): DRIFT at least 10 points above the reference, above
    SFT on the same rollouts with uniform weights, and within 2 points of online RL (or better) while
    online RL had at least 4x DRIFT's wall time. The last one measured 72.6 vs 71.1 here; it is
    sensitive to the reference (an earlier one gave 52.3 vs 56.2, see the README).

    Runs in a subprocess with the machine's real devices (one CPU device), not the suite's 8 fake ones:
    the device count changes float reduction order, hence the trained models, like another seed does
    (on 8 fake devices an earlier reference measured 34.0 -> 43.2). If this fails after a change, rerun
    `bash launch/quickstart.sh` and compare report.md with the README before touching the config."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_DEFAULT_MATMUL_PRECISION")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "drift_jax.main", "--config=configs/quickstart.py", f"--workdir={tmp_path}"],
                   cwd=root, env={**env, "PYTHONPATH": root}, check=True, stdout=subprocess.DEVNULL)
    methods = json.loads((tmp_path / "results.json").read_text())["methods"]
    drift = methods["drift"]
    assert drift["multi@5"] >= methods["reference"]["multi@5"] + 0.10, methods
    assert drift["multi@5"] > methods["sft_rollouts"]["multi@5"], methods
    online = methods["online_rl"]
    assert online["wall_seconds"] >= 4 * drift["wall_seconds"], methods
    assert drift["multi@5"] >= online["multi@5"] - 0.02, methods
