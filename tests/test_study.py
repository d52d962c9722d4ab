"""The multi-seed study (drift_jax/evaluation/study.py) against hand-computed and brute-force values, and
tools/readme_results.py, which writes the README's results block from its study.json."""

import itertools
import json
import math
import pathlib

import numpy as np
import pytest

from drift_jax.evaluation import study
from tools import keep_run, readme_results


def test_t_interval_by_hand():
    # mean 0.6, sd 0.1, n 3: half width t_{0.975, 2} * 0.1 / sqrt(3), t_{0.975, 2} = 4.302652729911275 (tables)
    s = study.t_interval([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert s["mean"] == pytest.approx(0.6) and s["n"] == 3
    assert (s["lo"], s["hi"]) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    pred = 4.302652729911275 * 0.1 * math.sqrt(1 + 1 / 3)  # one new seed: sd * sqrt(1 + 1/n)
    assert (s["pred_lo"], s["pred_hi"]) == (pytest.approx(0.6 - pred), pytest.approx(0.6 + pred))
    # n 5, t_{0.975, 4} = 2.7764451051977987; sd of 1..5 is sqrt(2.5)
    s = study.t_interval([1, 2, 3, 4, 5])
    assert s["hi"] - s["mean"] == pytest.approx(2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5))
    assert study.t_interval([0.4]) == {"mean": 0.4, "lo": None, "hi": None, "pred_lo": None, "pred_hi": None, "n": 1}


def test_mcnemar_by_hand():
    # 7 problems only a solved, 2 only b: p = 2 * P(Binomial(9, 1/2) <= 2) = 2 * (1 + 9 + 36) / 512
    a = np.array([1] * 7 + [0] * 2 + [1] * 5 + [0] * 4)
    b = np.array([0] * 7 + [1] * 2 + [1] * 5 + [0] * 4)
    assert study.mcnemar(a, b) == {"a_only": 7, "b_only": 2, "p": pytest.approx(92 / 512)}
    assert study.mcnemar(a, a)["p"] == 1.0
    assert study.mcnemar(b, a)["p"] == pytest.approx(92 / 512)


def _exact_bootstrap(d_S):
    """Every outcome of the two-level resampling (seeds, then each drawn seed's problems) enumerated with its
    probability: the exact bootstrap distribution of the mean over drawn seeds of the per-seed mean."""
    per_seed = [[np.mean(d[list(idx)]) for idx in itertools.product(range(len(d)), repeat=len(d))] for d in d_S]
    values, probs = [], []
    for seeds in itertools.product(range(len(d_S)), repeat=len(d_S)):
        outcomes = list(itertools.product(*(per_seed[s] for s in seeds)))
        values += [np.mean(means) for means in outcomes]
        probs += [1 / len(d_S) ** len(d_S) / len(outcomes)] * len(outcomes)
    return np.array(values), np.array(probs)


def test_paired_bootstrap_against_exact_enumeration():
    a_S = [np.array([1, 1, 1, 0]), np.array([1, 0, 1])]
    b_S = [np.array([0, 1, 0, 0]), np.array([1, 1, 0])]
    values, probs = _exact_bootstrap([a - b for a, b in zip(a_S, b_S)])
    below, above = probs[values <= 1e-12].sum(), probs[values >= -1e-12].sum()
    got = study.paired_bootstrap(a_S, b_S, samples=200_000, seed=1)
    assert got["diff"] == pytest.approx(np.mean([0.5, 0.0]))  # mean over seeds of the paired differences
    assert got["p"] == pytest.approx(min(1.0, 2 * min(below, above)), abs=0.01)  # Monte Carlo error ~0.002
    # The interval's ends are the exact distribution's 2.5% and 97.5% quantiles, up to Monte Carlo error.
    assert probs[values < got["lo"] - 1e-12].sum() <= 0.025 + 0.005 and probs[values <= got["lo"] + 1e-12].sum() >= 0.025 - 0.005
    assert probs[values > got["hi"] + 1e-12].sum() <= 0.025 + 0.005 and probs[values >= got["hi"] - 1e-12].sum() >= 0.025 - 0.005
    assert got == study.paired_bootstrap(a_S, b_S, samples=200_000, seed=1)  # seeded


def test_paired_bootstrap_significance():
    rng = np.random.default_rng(0)
    better = [(rng.random(400) < 0.7).astype(float) for _ in range(3)]
    worse = [(rng.random(400) < 0.4).astype(float) for _ in range(3)]
    assert study.paired_bootstrap(better, worse)["significant"]
    same = study.paired_bootstrap(better, better)
    assert same["diff"] == 0 and same["p"] == 1.0 and not same["significant"]
    # One seed of three disagrees strongly: drawing it three times happens 1 time in 27, so p > 0.05.
    split = study.paired_bootstrap(better[:2] + worse[2:], worse[:2] + better[2:])
    assert not split["significant"] and split["p"] > 0.05
    with pytest.raises(ValueError):
        study.paired_bootstrap([np.array([1.0])], [np.array([1.0, 0.0])])


def _seed_dir(root, seed, solved, wall, ids=None, curve=None):
    """A fake seed workdir: results.json and eval_<method>.json as pipeline.run writes them."""
    d = root / f"seed-{seed}"
    d.mkdir()
    methods = {}
    for name, turns in solved.items():
        turns = np.asarray(turns)
        entry = {f"multi@{k}": float(np.mean((turns >= 1) & (turns <= k))) for k in (1, 2)}
        methods[name] = {**entry, "wall_seconds": wall[name], **({"curve": curve} if name == "online_rl" else {})}
        (d / f"eval_{name}.json").write_text(json.dumps({
            **entry, "problem_ids": ids or [f"p{seed}-{i}" for i in range(len(turns))],
            "solved_turns": turns.tolist()}))
    (d / "results.json").write_text(json.dumps({"methods": methods, "max_turns": 2, "task": "synthetic"}))
    (d / "stages").mkdir()
    (d / "stages" / "reference.json").write_text(json.dumps({"summary": {"seconds": 60.0 + seed}}))
    return str(d)


def test_study_of_fake_seeds(tmp_path):
    rng = np.random.default_rng(3)
    dirs = []
    for seed in range(3):
        solved = {"reference": rng.choice([0, 1, 2], size=200, p=[0.6, 0.2, 0.2]),
                  "drift": rng.choice([0, 1, 2], size=200, p=[0.2, 0.5, 0.3]),
                  "online_rl": rng.choice([0, 1, 2], size=200, p=[0.25, 0.45, 0.3])}
        dirs.append(_seed_dir(tmp_path, seed, solved, {"reference": 30, "drift": 80 + seed, "online_rl": 320},
                              curve=[[0, 0.3], [70, 0.5], [90, 0.6 + seed / 100], [300, 0.75]]))
    s = study.write_study(dirs, str(tmp_path / "out"), samples=2000)
    assert json.loads((tmp_path / "out" / "study.json").read_text()) == json.loads(json.dumps(s))
    runs = [json.loads((tmp_path / f"seed-{i}" / "results.json").read_text())["methods"] for i in range(3)]
    per_seed = [r["drift"]["multi@2"] for r in runs]
    assert s["methods"]["drift"]["multi@2"] == {**study.t_interval(per_seed), "per_seed": per_seed}
    # online RL at DRIFT's wall time (80-82 s): the curve's point at 70 s on every seed
    assert s["methods"]["online_rl@drift_time"]["multi@2"]["per_seed"] == [0.5, 0.5, 0.5]
    assert s["run_seconds"]["per_seed"] == [60.0, 61.0, 62.0] and s["problems_per_seed"] == [200] * 3
    pairs = {(c["a"], c["b"], c["metric"]): c for c in s["comparisons"]}
    assert set(pairs) == {(a, b, m) for a, b in [("reference", "drift"), ("reference", "online_rl"),
                                                 ("drift", "online_rl")] for m in ("multi@2", "multi@1")}
    ref_drift = pairs[("reference", "drift", "multi@2")]
    assert ref_drift["significant"] and ref_drift["diff"] == pytest.approx(
        np.mean([r["reference"]["multi@2"] - r["drift"]["multi@2"] for r in runs]))
    md = (tmp_path / "out" / "study.md").read_text()
    assert "| reference vs drift | multi@2 |" in md and "**significant**" in md and "prediction interval: reference [" in md


def test_methods_on_different_problems_are_refused(tmp_path):
    d = _seed_dir(tmp_path, 0, {"reference": [1, 0], "drift": [1, 1]}, {"reference": 1, "drift": 1})
    ev = json.loads((tmp_path / "seed-0" / "eval_drift.json").read_text())
    (tmp_path / "seed-0" / "eval_drift.json").write_text(json.dumps({**ev, "problem_ids": ["x", "y"]}))
    with pytest.raises(ValueError, match="different problems"):
        study.summarize([study.load_seed(d)])


def _fake_study(diffs: dict[str, tuple[float, bool]]) -> dict:
    comparisons = [{"a": other, "b": "drift", "metric": "multi@2", "diff": -d, "lo": -d - 0.02, "hi": -d + 0.02,
                    "p": 0.01 if sig else 0.5, "significant": sig, "mcnemar": {"p": 0.02}} for other, (d, sig) in diffs.items()]
    cell = {"mean": 0.5, "lo": 0.45, "hi": 0.55, "pred_lo": 0.3, "pred_hi": 0.7, "per_seed": [0.45, 0.5, 0.55]}
    return {"max_turns": 2, "seeds": 3, "machine": {"processor": "x86_64", "cpus": 2, "platform": "Linux"},
            "run_seconds": {"mean": 600.0}, "problems_per_seed": [1000], "interval": "95% t", "test": "paired bootstrap",
            "methods": {m: {"multi@1": cell, "multi@2": cell, "wall_seconds": {"mean": 80.0}} for m in ["drift", *diffs]},
            "comparisons": comparisons}


def test_readme_block_between_the_markers(tmp_path):
    s = _fake_study({"sft": (0.10, True), "sft_rollouts": (0.01, False), "online_rl": (-0.05, True)})
    block = readme_results.results_block(s)
    assert "| sft | +10.0 | [+8.0, +12.0] |" in block  # DRIFT - sft, though study.py stored sft - drift
    assert "single-turn SFT: the paper has DRIFT above; here DRIFT +10.0 points [+8.0, +12.0]: agrees." in block
    assert "SFT-5turn): the paper has DRIFT above; here DRIFT +1.0 points [-1.0, +3.0]: does not show it" in block
    assert "online RL is significantly better" in block
    wide = _fake_study({"online_rl": (-0.05, False)})
    wide["comparisons"][0].update(lo=-0.03, hi=0.07)  # online_rl - drift in [-3, +7]: DRIFT - online_rl in [-7, +3]
    assert "online RL up to 7.0 points ahead" in readme_results.results_block(wide)
    close = _fake_study({"online_rl": (0.0, False)})  # DRIFT - online_rl in [-2, +2]: parity
    assert "with 4x DRIFT's wall time: the paper has DRIFT on par or above; here DRIFT +0.0 points [-2.0, +2.0]: agrees (no significant difference)" in readme_results.results_block(close)
    assert "within the 95% prediction interval: drift [30.0, 70.0]; sft [30.0, 70.0]" in block
    assert "Seed by seed (multi@2): drift 45.0 / 50.0 / 55.0; sft 45.0 / 50.0 / 55.0;" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{readme_results.BEGIN}\nold numbers 99.9\n{readme_results.END}\nafter\n")
    assert readme_results.main([str(_write(tmp_path, s)), f"--readme={readme}", "--check"]) == 1
    assert readme_results.main([str(_write(tmp_path, s)), f"--readme={readme}"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n<!-- results:begin -->") and text.endswith("<!-- results:end -->\nafter\n")
    assert "99.9" not in text
    assert readme_results.main([str(_write(tmp_path, s)), f"--readme={readme}", "--check"]) == 0
    with pytest.raises(ValueError, match="no such block"):
        readme_results.replace_block("no markers", block)
    # The tuning block: launch/tune.py's tune.md, between its own markers, the results block untouched.
    tune_md = tmp_path / "tune.md"
    tune_md.write_text("# Tuning on the dev split (multi@5)\n\n## beta (chosen for drift)\n\n| point | drift |\n")
    readme.write_text(text.replace("after\n", f"{readme_results.TUNE_BEGIN}\nold\n{readme_results.TUNE_END}\n"))
    assert readme_results.main([f"--tune={tune_md}", f"--readme={readme}"]) == 0
    tuned = readme.read_text()
    assert "\n### Tuning on the dev split (multi@5)" in tuned and "\n#### beta (chosen for drift)" in tuned
    assert "\nold\n" not in tuned and tuned.split(readme_results.TUNE_BEGIN)[0] == text.replace("after\n", "")


def _write(tmp_path, s):
    path = tmp_path / "study.json"
    path.write_text(json.dumps(s))
    return path


TINY_FLAGS = [  # tests/test_pipeline.py's tiny_config as --config flags (reference and DRIFT, seconds per stage)
    "--config.methods=('reference','drift')", "--config.max_turns=2", "--config.mesh.data=4", "--config.mesh.tensor=2",
    "--config.model.scratch.hidden_size=32", "--config.model.scratch.num_layers=1", "--config.model.scratch.num_heads=2",
    "--config.model.scratch.num_kv_heads=1", "--config.model.scratch.mlp_dim=64", "--config.reference.num_demos=64",
    "--config.reference.train.epochs=1", "--config.reference.train.progress_bar=False", "--config.rollout.num_problems=6",
    "--config.rollout.num_samples=2", "--config.rollout.rows_per_batch=8", "--config.rollout.problems_per_shard=4",
    "--config.train.epochs=1", "--config.train.batch_size=4", "--config.train.seq_len=96",
    "--config.train.progress_bar=False", "--config.eval.num_problems=8", "--config.eval.rows_per_batch=8",
    "--config.drift.all_fail=keep", "--config.budgets.drift=0", "--precompile=false",
]


@pytest.mark.slow
def test_study_script_runs_seeds_and_aggregates(tmp_path):
    """`SEEDS=2 FIRST=5 bash launch/study.sh` on a tiny config: seed-5 and seed-6 run with their seeds,
    study.json aggregates exactly their eval files (~2-4 minutes on 2 cores)."""
    import os
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).parents[1]
    subprocess.run(["bash", "launch/study.sh", str(tmp_path), *TINY_FLAGS], cwd=root, check=True,
                   env={**os.environ, "SEEDS": "2", "FIRST": "5"}, stdout=subprocess.DEVNULL)
    s = json.loads((tmp_path / "study.json").read_text())
    assert s["seeds"] == 2 and s["workdirs"] == [str(tmp_path / "seed-5"), str(tmp_path / "seed-6")]
    configs = [json.loads(next((tmp_path / f"seed-{i}" / "run_configs").glob("*.json")).read_text()) for i in (5, 6)]
    assert [c["seed"] for c in configs] == [5, 6]
    solved = [json.loads((tmp_path / f"seed-{i}" / "eval_drift.json").read_text())["multi@2"] for i in (5, 6)]
    assert s["methods"]["drift"]["multi@2"]["per_seed"] == solved
    assert "| reference vs drift | multi@2 |" in (tmp_path / "study.md").read_text()
    # KEEP: the finished seeds (cached here, so nothing retrains) are kept, and a later call on a fresh workdir
    # (another machine) runs no kept seed and writes the same study from the kept records.
    kept = tmp_path / "kept"
    for workdir in (tmp_path, tmp_path / "fresh"):
        out = subprocess.run(["bash", "launch/study.sh", str(workdir), *TINY_FLAGS], cwd=root, check=True,
                             env={**os.environ, "SEEDS": "2", "FIRST": "5", "KEEP": str(kept)},
                             capture_output=True, text=True).stdout
        k = json.loads((kept / "study.json").read_text())
        assert k["workdirs"] == [str(kept / "seed-5"), str(kept / "seed-6")] and k["methods"] == s["methods"]
    assert "seed 5: kept in" in out and not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in (kept / "seed-5").iterdir()) == [
        "config.json", "eval_drift.json", "eval_reference.json", "provenance.json", "report.md", "results.json", "stages"]


def _tune():
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("tune", pathlib.Path(__file__).parents[1] / "launch" / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_runs_on_dev_and_chooses_by_the_mean(tmp_path):
    tune = _tune()
    cmd = tune.command("configs/quickstart.py", "w", 1, ("reference", "drift"), {"drift.beta": 0.3}, ["--config.x=1"])
    assert "--config.eval.split=dev" in cmd and not any("split=test" in c for c in cmd)
    assert cmd[-2:] == ["--config.x=1", "--config.drift.beta=0.3"]  # the point's value wins over extra flags
    points = [{"overrides": {"b": 1}, "mean": {"drift": 0.5}, "failed_seeds": []},
              {"overrides": {"b": 2}, "mean": {"drift": 0.6}, "failed_seeds": []},
              {"overrides": {"b": 3}, "mean": {"drift": 0.6}, "failed_seeds": []},  # a tie: the earlier point
              {"overrides": {"b": 4}, "mean": {"drift": 0.9}, "failed_seeds": [1]}]  # failed on a seed: never chosen
    assert tune.choose(points, ("drift",), "multi@5") == {"drift": {"overrides": {"b": 2}, "multi@5": 0.6}}
    # A point starts from hard links of its base's stages (not its results or configs).
    base = tmp_path / "base"
    (base / "stages").mkdir(parents=True)
    (base / "stages" / "reference.json").write_text("{}")
    (base / "run_configs").mkdir()
    (base / "results.json").write_text("{}")
    tune.link_stages(str(base), str(tmp_path / "point"))
    assert (tmp_path / "point" / "stages" / "reference.json").stat().st_ino == (base / "stages" / "reference.json").stat().st_ino
    assert not (tmp_path / "point" / "results.json").exists() and not (tmp_path / "point" / "run_configs").exists()
    # The epochs group sets every method's own budget; a point runs only the methods it sets one for.
    methods, decides, grid = tune.GROUPS["epochs"]
    assert decides == ("drift", "sft_rollouts", "rft", "sft")
    assert tune.point_methods(methods, grid[0]) == ("reference", *decides)
    assert tune.point_methods(methods, {"budgets.rft": 12, "budgets.sft": 12}) == ("reference", "rft", "sft")
    assert tune.point_methods(methods, {"drift.beta": 0.3}) == methods
    assert tune.point_name({"budgets.rft": 12, "budgets.sft": 12}) == "budgets=12"


def test_tune_keeps_earlier_groups_and_records_each_groups_base(tmp_path, monkeypatch):
    # Coordinate ascent over calls: a group tuned in an earlier call stays in tune.json with the base it ran
    # from; the group run now records its own base run and commit; another base or seeds is refused.
    import os
    import subprocess
    import sys

    tune = _tune()
    earlier = {"base": "configs/quickstart.py", "split": "dev", "seeds": [0], "extra_flags": [], "metric": "multi@5",
               "base_results": {"0": {"drift": {"multi@5": 0.5}}},
               "groups": {"beta": {"methods": ["reference", "drift"], "decides": ["drift"], "chosen": {},
                                   "points": [{"name": "drift.beta=0.3", "overrides": {"drift.beta": 0.3},
                                               "mean": {"drift": 0.55}, "failed_seeds": []}]}}}
    (tmp_path / "tune.json").write_text(json.dumps(earlier))

    real_run = subprocess.run

    def fake_run(cmd, check=False, **kw):  # a pipeline run: dev results that grow with kl_coef
        if cmd[0] == "git":
            return real_run(cmd, check=check, **kw)
        workdir = next(c.split("=", 1)[1] for c in cmd if c.startswith("--workdir="))
        kl = float(next((c.split("=", 1)[1] for c in cmd if c.startswith("--config.online_rl.kl_coef=")), 0.0))
        methods = {"reference": 0.4, "drift": 0.6, "online_rl": 0.5 + kl}
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"max_turns": 5, "methods": {m: {"multi@5": v, "wall_seconds": 1.0, "iterations": 7}
                                                   for m, v in methods.items()}}, f)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(tune.subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["tune.py", f"--workdir={tmp_path}", "--groups=online_rl"])
    tune.main()
    out = json.loads((tmp_path / "tune.json").read_text())
    assert list(out["groups"]) == ["beta", "online_rl"]
    assert out["groups"]["beta"]["points"] == earlier["groups"]["beta"]["points"]
    assert out["groups"]["beta"]["base_results"] == earlier["base_results"]  # the call it ran in
    orl = out["groups"]["online_rl"]
    assert orl["base_results"]["0"]["drift"]["multi@5"] == 0.6 and orl["commit"]
    assert orl["chosen"]["online_rl"]["overrides"] == {"online_rl.kl_coef": 0.1, "online_rl.train.lr": 1e-3}
    assert "## beta" in (tmp_path / "tune.md").read_text() and "## online_rl" in (tmp_path / "tune.md").read_text()
    monkeypatch.setattr(sys, "argv", ["tune.py", f"--workdir={tmp_path}", "--groups=beta", "--seeds=0,1"])
    with pytest.raises(SystemExit, match="seeds"):
        tune.main()


def _fake_pipeline(calls: list[list[str]]):
    """A stand-in for `python -m drift_jax.main` in a tune call: it records the command and writes what a run
    leaves (results, run config, stage markers, the reference policy); online RL's iterations are its
    max_iterations, or 40 when the time budget decides."""
    import os
    import subprocess

    real_run = subprocess.run

    def fake_run(cmd, check=False, **kw):
        if cmd[0] == "git":
            return real_run(cmd, check=check, **kw)
        calls.append(cmd)
        flags = dict(c[2:].split("=", 1) for c in cmd if c.startswith("--") and "=" in c)
        workdir = flags["workdir"]
        lr = float(flags.get("config.online_rl.train.lr", 1e-3))
        iterations = int(flags.get("config.online_rl.max_iterations", 40))
        methods = {m: {"multi@5": 0.4 if m == "reference" else 0.6 if m == "drift" else 0.5 + lr * 100,
                       "wall_seconds": 1.0, **({"iterations": iterations} if m == "online_rl" else {})}
                   for m in eval(flags["config.methods"])}
        for sub in ("stages", "run_configs", "reference/hf"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        files = {"results.json": {"max_turns": 5, "methods": methods}, "eval_reference.json": {"multi@5": 0.4},
                 "stages/reference.json": {"summary": {"seconds": 1.0}}, "stages/eval_reference.json": {},
                 "run_configs/20260101-000000-1.json": {"seed": int(flags["config.seed"])},
                 "reference/hf/model.safetensors": {"weights": workdir}}
        for name, content in files.items():
            if name.startswith("reference/") and os.path.exists(os.path.join(workdir, name)):
                continue  # a point's reference is its base's (linked)
            with open(os.path.join(workdir, name), "w") as f:
                json.dump(content, f)
        return subprocess.CompletedProcess(cmd, 0)

    return fake_run


def test_tune_online_rl_points_match_iterations_and_span_sessions_with_keep(tmp_path, monkeypatch):
    # The config's online RL point runs on its time budget, alone; the others run its iteration count without
    # DRIFT (--parallel of them at once: no clock decides their length).
    # With --keep, the base (with its reference policy) and every finished point are kept; a later call on a
    # fresh workdir (another machine) reruns nothing kept, restores the kept reference for the points it
    # still has to run, and refuses kept records made by other code.
    import shutil
    import subprocess
    import sys

    tune = _tune()
    code = {"drift_jax": "tree-a", "configs": "tree-b"}
    monkeypatch.setattr(tune.keep_run, "provenance", lambda: {"commit": "c0", "code": dict(code), "dirty": False,
                                                              "lock_sha256": "l", "machine": {}})
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", _fake_pipeline(calls))
    keep = tmp_path / "kept"

    def tune_call(workdir):
        calls.clear()
        monkeypatch.setattr(sys, "argv", ["tune.py", f"--workdir={workdir}", "--groups=online_rl", f"--keep={keep}",
                                          "--parallel=3"])  # the matched points three at a time
        tune.main()
        return json.loads((workdir / "tune.json").read_text())["groups"]["online_rl"]

    first = tune_call(tmp_path / "w1")
    assert len(calls) == 6  # the base and five points (the first before any other: its iterations are matched)
    assert "--config.methods=('reference','drift','online_rl')" in calls[1] and not any("max_iterations" in c for c in calls[1])
    for cmd in calls[2:]:
        assert "--config.methods=('reference','online_rl')" in cmd
        assert "--config.online_rl.max_iterations=40" in cmd and "--config.online_rl.budget_seconds=1000000000.0" in cmd
    assert first["chosen"]["online_rl"]["overrides"] == {"online_rl.kl_coef": 0.01, "online_rl.train.lr": 2e-3}
    assert (keep / "seed-0" / "base" / "reference" / "hf" / "model.safetensors").exists()
    assert "Points after the first: 40 iterations each" in (tmp_path / "w1" / "tune.md").read_text()

    # Another machine: nothing kept runs again; the same choice from the kept records.
    assert tune_call(tmp_path / "w2")["chosen"] == first["chosen"] and calls == []
    # A point that did not finish before the session ended: only it runs, from the kept reference.
    shutil.rmtree(keep / "seed-0" / "online_rl" / "online_rl.kl_coef=0.01,online_rl.train.lr=0.0003")
    assert tune_call(tmp_path / "w3")["chosen"] == first["chosen"]
    assert len(calls) == 1 and "--config.online_rl.train.lr=0.0003" in calls[0]
    assert "--config.online_rl.max_iterations=40" in calls[0]
    hf = tmp_path / "w3" / "seed-0" / "online_rl" / "online_rl.kl_coef=0.01,online_rl.train.lr=0.0003" / "reference" / "hf"
    assert json.loads((hf / "model.safetensors").read_text()) == {"weights": str(tmp_path / "w1" / "seed-0" / "base")}
    code["drift_jax"] = "tree-c"  # the code changed since the records were kept
    with pytest.raises(SystemExit, match="not made by this code"):
        tune_call(tmp_path / "w4")


def test_kept_records_make_the_same_study_and_refuse_other_code_or_config(tmp_path, monkeypatch):
    # tools/keep_run.py: a seed's record (results, per-problem evaluations, stage markers, config, provenance)
    # gives the study the workdir gives, with the machine it ran on; records of other code, another config
    # (the seed aside) or uncommitted code are flagged.
    import pathlib

    machine = {"platform": "Linux-test", "processor": "CPU-X", "cpus": 2}
    prov = {"commit": "c", "code": {"drift_jax": "a", "configs": "b"}, "dirty": False, "lock_sha256": "l", "machine": machine}
    monkeypatch.setattr(keep_run, "provenance", lambda: dict(prov))
    rng = np.random.default_rng(0)
    runs, kept = [], []
    for seed in range(2):
        d = pathlib.Path(_seed_dir(tmp_path, seed, {m: rng.choice([0, 1, 2], size=50) for m in ("reference", "drift")},
                                   {"reference": 1.0, "drift": 2.0}))
        (d / "run_configs").mkdir()
        (d / "run_configs" / "20260101-000000-1.json").write_text(json.dumps({"seed": 0, "x": 1}))
        (d / "run_configs" / "20260102-000000-1.json").write_text(json.dumps({"seed": seed, "x": 2}))  # the last run
        (d / "stages" / "drift.started.json").write_text("{}")
        keep_run.keep(str(d), str(tmp_path / "kept" / d.name))
        runs.append(str(d))
        kept.append(str(tmp_path / "kept" / d.name))
    assert sorted(p.name for p in (tmp_path / "kept" / "seed-0").rglob("*")) == sorted(
        ["config.json", "eval_drift.json", "eval_reference.json", "provenance.json", "reference.json", "results.json",
         "stages"])
    assert json.loads((tmp_path / "kept" / "seed-1" / "config.json").read_text()) == {"seed": 1, "x": 2}
    assert keep_run.check(kept) == []
    a = study.write_study(runs, str(tmp_path / "a"), samples=500)
    b = study.write_study(kept, str(tmp_path / "b"), samples=500)
    assert a["methods"] == b["methods"] and a["comparisons"] == b["comparisons"]
    assert b["machines"] == [machine, machine] and b["machines_summary"] == "CPU-X (2 CPU cores, Linux-test)"
    # Another code tree, another config, uncommitted code: each flagged.
    prov.update(code={"drift_jax": "z", "configs": "b"}, dirty=True)
    (tmp_path / "seed-1" / "run_configs" / "20260103-000000-1.json").write_text(json.dumps({"seed": 1, "x": 3}))
    with pytest.raises(RuntimeError, match="uncommitted"):
        keep_run.keep(runs[1], kept[1])
    keep_run.keep(runs[1], kept[1], allow_dirty=True)
    problems = keep_run.check(kept)
    assert len(problems) == 3 and "uncommitted" in problems[0] and "code" in problems[1] and "config" in problems[2]
    other = {**machine, "processor": "CPU-Y"}
    assert study.machines({"workdirs": ["k/seed-0", "k/seed-1", "k/seed-2"], "machines": [machine, other, machine]}) == (
        "CPU-X (2 CPU cores, Linux-test) (seed-0, seed-2); CPU-Y (2 CPU cores, Linux-test) (seed-1)")


def test_a_workdir_and_its_kept_record_name_the_same_machine(tmp_path):
    # A study of workdirs (not kept) names the machine as tools/keep_run.py's provenance does: the CPU's
    # model name where /proc/cpuinfo has one, not the architecture ("x86_64").
    import pathlib

    rng = np.random.default_rng(0)
    dirs = [_seed_dir(tmp_path, seed, {m: rng.choice([0, 1, 2], size=20) for m in ("reference", "drift")},
                      {"reference": 1.0, "drift": 2.0}) for seed in range(2)]
    s = study.write_study(dirs, str(tmp_path / "out"), samples=100)
    assert s["machines"] == [keep_run.provenance()["machine"]] * 2
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    names = [l.split(":", 1)[1].strip() for l in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if l.startswith("model name")]
    if names:
        assert s["machine"]["processor"] == names[0]


def test_benchmarks_block(tmp_path):
    # tools/readme_results.py's performance table: figures and provenance land in the rows, a missing record is
    # named. (That each benchmark prints every key the table reads: tests/test_benchmarks.py runs them.)
    prov = {"commit": "0123456789ab", "machine": {"processor": "CPU-X", "cpus": 2}}
    result = {"batch": [16, 256], "ratio_vs_pytorch": 2.43, "tokens_per_s": 9000, "torch_tokens_per_s": 3700,
              "ratio_per_repeat": [2.4, 2.5], "mfu": 0.5, "mfu_bf16_compute": 0.3, "peak_f32_matmul_gflops": 99.0}
    (tmp_path / "train_step.json").write_text(json.dumps({"result": result, "seconds": 60, "provenance": prov}))
    block = readme_results.benchmarks_block(readme_results.read_benchmarks(str(tmp_path)), "B")
    assert "| weighted-SFT step, 16 x 256 tokens | `python benchmarks/train_step.py` | 2.43x the PyTorch" in block
    assert "train_step at 01234567 on CPU-X (2 CPU cores), 60 s" in block
    assert "| rollouts | `python benchmarks/rollouts.py` | not measured (no B/rollouts.json) |" in block
    # preflight_agreement's line: ratios keyed "<case> <stage> <figure>" (its case names hold spaces), a row per case.
    case = "m[2 layers] v5e:2x4 mesh={'data': 1} train 16x1024/1 rows=48"
    figures = {"flops": 1.0, "collective_bytes": 1.0, "collective_count": 1.0, "hbm_bytes_hlo": 0.95,
               "hbm_bytes_hlo_marginal": 1.2, "hbm_bytes_floor": 0.99, "hbm_bytes_floor_hbm": 0.98, "memory": 1.01,
               "hbm_bytes": 0.57}
    ratios = {f"{case} rollout_decode {k}": v for k, v in figures.items()} | {f"{case} train flops": 1.002}
    (tmp_path / "preflight_agreement.json").write_text(json.dumps({"result": {"ratios": ratios, "off": [
        f"{case} rollout_decode hbm_bytes_hlo 0.950"]}, "seconds": 700, "provenance": prov}))
    block = readme_results.benchmarks_block(readme_results.read_benchmarks(str(tmp_path)), "B")
    assert (f"| preflight vs independent loop-free compiles: {case} | `PYTHONPATH=. python benchmarks/preflight_agreement.py` "
            "| FLOPs train 1.002, rollout_decode 1.0; decode collectives 1.0 of the bytes, 1.0 of the count; decode HBM "
            "bytes 0.95 of the one-trip (upper) and 1.2 of the marginal-trip (lower) reference; unchecked: memory "
            "rollout_decode 1.01; decode bytes 0.99 of the analytic floor (0.98 less the loop carry kept in VMEM); "
            "XLA's bytes figure (not an HBM count) rollout_decode 0.57; off by more than 10%: rollout_decode "
            "hbm_bytes_hlo 0.950 |") in block


def test_new_runs_against_prediction_intervals_by_hand(tmp_path, capsys):
    """drift_jax/evaluation/replicate.py: each method's score and DRIFT's paired difference on a new run against
    the study's prediction intervals, mean +- t_{0.975, 2} * sd * sqrt(1 + 1/3), worked out by hand."""
    from drift_jax.evaluation import replicate

    def solved(n_solved):  # 10 problems, the first n solved at turn 1
        return [1] * n_solved + [0] * (10 - n_solved)

    dirs = [_seed_dir(tmp_path, s, {"reference": solved(r), "drift": solved(d)}, {"reference": 1, "drift": 1})
            for s, (r, d) in enumerate([(2, 4), (2, 5), (3, 6)])]
    study.write_study(dirs, str(tmp_path / "study"), samples=200)
    (tmp_path / "new").mkdir()
    new = _seed_dir(tmp_path / "new", 100, {"reference": solved(0), "drift": solved(9)}, {"reference": 1, "drift": 1})
    quick = pathlib.Path(_seed_dir(tmp_path / "new", 1, {"reference": solved(2), "drift": solved(5)},
                                   {"reference": 1, "drift": 1})).rename(tmp_path / "new" / "quickstart")
    (quick / "run_configs").mkdir()
    (quick / "run_configs" / "1.json").write_text(json.dumps({"seed": 1}))  # the study's seed 1 again: not new
    code = replicate.main([str(tmp_path / "study" / "study.json"), new, str(quick), "--out", str(tmp_path / "rep")])
    rep = json.loads((tmp_path / "rep" / "replication.json").read_text())
    half = 4.302652729911275 * math.sqrt(1 + 1 / 3)  # times each sd
    sd_ref = sd_diff = math.sqrt(((0.2 - 0.7 / 3) ** 2 * 2 + (0.3 - 0.7 / 3) ** 2) / 2)  # refs 0.2 0.2 0.3, diffs 0.2 0.3 0.3
    expect = {("drift", "multi@2"): (0.5, 0.1, [0.9, 0.5]), ("reference", "multi@2"): (0.7 / 3, sd_ref, [0.0, 0.2]),
              ("drift - reference", "multi@2"): (0.8 / 3, sd_diff, [0.9, 0.3])}
    rows = {(r["what"], r["metric"]): r for r in rep["rows"]}
    assert set(rows) == {*expect, ("drift", "multi@1"), ("reference", "multi@1")}
    for k, (mean, sd, values) in expect.items():
        assert (rows[k]["pred_lo"], rows[k]["pred_hi"]) == (pytest.approx(mean - half * sd), pytest.approx(mean + half * sd))
        assert rows[k]["values"] == pytest.approx(values)
    # 0.9 - 0.0 is above the difference's interval [-0.020, 0.554]; every other value lies inside its interval.
    assert rows[("drift - reference", "multi@2")]["inside"] == [False, True]
    assert rep["outside"] == 1 and rep["checked"] == 10 and code == 1
    assert rep["study_seeds"] == [0, 1, 2] and rep["run_seeds"] == [100, 1] and rep["new_seeds"] == [True, False]
    md = (tmp_path / "rep" / "replication.md").read_text()
    assert "| drift - reference | multi@2 | +26.7 | [-2.0, +55.4] | +90.0 (OUT) | +30.0 (in) |" in md
    assert "9 of 10 values inside" in md and "Not new seeds (the study used them, or their seed is unknown): quickstart." in md
    # A run of another task (here more turns) has no prediction: refused.
    other = json.loads((tmp_path / "new" / "seed-100" / "results.json").read_text())
    (tmp_path / "new" / "seed-100" / "results.json").write_text(json.dumps({**other, "max_turns": 3}))
    assert replicate.main([str(tmp_path / "study" / "study.json"), new]) == 2
    with pytest.raises(ValueError, match="no prediction applies"):
        replicate.check(json.loads((tmp_path / "study" / "study.json").read_text()), [study.load_seed(new)])
    # A study seed that names no seed (no config.json, no seed-N directory) is reported, not silently dropped.
    unnamed = json.loads((tmp_path / "study" / "study.json").read_text())
    unnamed["workdirs"][1] = str(tmp_path / "run-b")
    (tmp_path / "unnamed.json").write_text(json.dumps(unnamed))
    capsys.readouterr()
    replicate.main([str(tmp_path / "unnamed.json"), str(quick)])
    assert "1 of the study's seeds cannot be identified" in capsys.readouterr().err
