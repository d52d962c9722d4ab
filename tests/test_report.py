"""Report metrics and files: multi@k, correction rates, results.json schema, report.md/png written."""

import json

import numpy as np
import pytest

from drift_jax.evaluation import report


def test_multi_at_k_and_correction_rates():
    solved = [1, 2, 0, 3, 1, 0, 5, 2]  # 0 = never solved within 5 turns
    m = report.multi_at_k(solved, 5)
    assert m == {"multi@1": 0.25, "multi@2": 0.5, "multi@3": 0.625, "multi@4": 0.625, "multi@5": 0.75}
    r = report.correction_rates(solved, 5)
    assert r["turn1"] == 2 / 8 and r["turn2"] == 2 / 6 and r["turn3"] == 1 / 4 and r["turn4"] == 0.0
    assert r["turn5"] == 1 / 3
    assert all(np.diff([m[f"multi@{k}"] for k in range(1, 6)]) >= 0)
    with pytest.raises(ValueError):
        report.multi_at_k([], 5)


def test_report_files(tmp_path):
    methods = {
        "reference": {**report.multi_at_k([1, 0, 2, 0], 3), "wall_seconds": 10.0, "correction_rates": report.correction_rates([1, 0, 2, 0], 3)},
        "drift": {**report.multi_at_k([1, 1, 2, 3], 3), "wall_seconds": 20.0},
    }
    report.write_results(str(tmp_path / "results.json"), methods)
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded["methods"]["drift"]["multi@3"] == 1.0 and loaded["methods"]["reference"]["multi@1"] == 0.25
    report.write_report(str(tmp_path), methods, 3, stage_seconds={"rollouts": 3.0},
                        weight_diagnostics={"ess_fraction": 0.4}, weights_N=np.array([0.1, 1.0, 2.9]),
                        curves={"online_rl": [(1.0, 0.2), (2.0, 0.4)]})
    md = (tmp_path / "report.md").read_text()
    assert "| drift | 50.0 | 75.0 | 100.0 | 20 |" in md and "ess_fraction" in md
    assert (tmp_path / "report.png").stat().st_size > 1000
