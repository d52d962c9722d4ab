"""The quickstart against the README's study, end to end, as `bash launch/quickstart.sh` runs it with a seed the
study did not use (slow: about 90 minutes on 2 CPU cores for every method; `bash launch/test.sh -m slow`)."""

import os
import pathlib
import subprocess
import sys

import pytest

from drift_jax.evaluation import replicate

ROOT = pathlib.Path(__file__).parents[1]
STUDY = ROOT / "docs/results/study/study.json"


@pytest.mark.slow
def test_quickstart_lands_within_the_readme_study(tmp_path):
    """Every method's held-out multi@1 and multi@5, and DRIFT's paired difference with each baseline, lie within
    the 95% prediction intervals of the README's study (drift_jax/evaluation/replicate.py), for seed 100
    (the README's unseen-seed check, docs/results/study-unseen, is the same run). The fast version of each
    part is in tests/test_study.py and tests/test_pipeline.py.

    Runs in a subprocess with the machine's real devices (one CPU device) as the study did, not the suite's 8
    fake ones: the device count changes float reduction order, hence the trained models, like another seed.
    Online RL's budget is 4x DRIFT's wall time, so run nothing else meanwhile."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_DEFAULT_MATMUL_PRECISION")}
    subprocess.run([sys.executable, "-m", "drift_jax.main", "--config=configs/quickstart.py", f"--workdir={tmp_path}",
                    "--config.seed=100"], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, check=True,
                   stdout=subprocess.DEVNULL)
    assert replicate.main([str(STUDY), str(tmp_path), "--out", str(tmp_path / "replication")]) == 0, (
        (tmp_path / "replication" / "replication.md").read_text())
