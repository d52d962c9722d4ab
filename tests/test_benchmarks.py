"""Smoke runs of benchmarks/*.py at tiny sizes: each still runs and prints every key the README's table reads."""
import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Sizes small enough for CI; the structure (contenders, timings, the printed line) is the benchmark's own.
TINY = {
    # More episodes than rows, so the engine has a steady phase before its drain.
    "rollouts": {"PROBLEMS": 2, "K": 4, "TURNS": 2, "MAX_NEW": 16, "MEDIAN": 4, "ROWS": 4},
    "sampler": {"BATCH": 2, "PROMPT": 4, "NEW": 4, "TURNS": 2, "FEEDBACK": 2, "ROUNDS": 1},
    "train_step": {"B": 2, "T": 16, "LAYERS": 1},
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_and_prints_what_the_readme_reads(name, monkeypatch, capsys):
    from tools import readme_results

    bench = _load(name)
    for constant, value in TINY[name].items():
        monkeypatch.setattr(bench, constant, value)
    if name == "rollouts":
        monkeypatch.setattr(bench, "ENGINE", bench.engine.EngineConfig(
            rows=TINY["rollouts"]["ROWS"], chunk_steps=4, prompt_buckets=(512,), prefill_rows=2, row_buckets=2))
    if name == "train_step":
        monkeypatch.setattr(sys, "argv", ["train_step.py", "--steps=1", "--warmup=1", "--repeats=1"])
        peak = bench.matmul_peak
        monkeypatch.setattr(bench, "matmul_peak", lambda: peak(n=64, reps=1))
    bench.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = readme_results._bench_rows(name, result)  # a KeyError names a key the benchmark no longer prints
    assert rows and all(figure for _, _, figure in rows)
    if name == "rollouts":
        assert result["trajectories_equal"] and result["episodes"] == 8
    if name == "sampler":
        assert result["batch"] == 2 and result["new_tokens"] == 4
    if name == "train_step":
        assert result["batch"] == [2, 16] and len(result["ratio_per_repeat"]) == 1
