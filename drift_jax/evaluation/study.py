"""A multi-seed study: mean and 95% interval per method over seeds, and paired tests between methods.

    python -m drift_jax.evaluation.study OUT_DIR SEED_WORKDIR...     (launch/study.sh runs the seeds, then this)

Reads each seed's results.json and eval_<method>.json (every problem's first solved turn, 0: never) and
writes OUT_DIR/study.json and study.md. Statistics:
- per method and metric, the mean over seeds and a 95% Student t interval (n - 1 degrees of freedom;
  none with one seed): it covers seed-to-seed variation (reference, rollouts, data order, eval problems);
  and the 95% prediction interval of one new seed, where a single run (the quickstart) should land;
- per pair of methods, a paired bootstrap of the difference in multi@k on the same held-out problems:
  seeds resampled with replacement, then problems within each drawn seed, the statistic the mean over the
  drawn seeds of the per-seed difference. A difference is significant when its 95% percentile interval
  excludes 0 (two-sided p < 0.05, not corrected for the number of pairs). McNemar's exact test on the pooled
  (seed, problem) pairs is given alongside: it conditions on the trained models (problems vary, seeds not).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from scipy import stats

from drift_jax.runtime import machine

LEVEL = 0.95
ORDER = ("reference", "drift", "sft_rollouts", "rft", "sft", "online_rl")  # results.json sorts them by name
BOOTSTRAP_SAMPLES = 10_000


# ----------------------------------------------------------------------------- statistics


def t_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean, the Student t interval of the mean, mean +- t_{(1+level)/2, n-1} * sd / sqrt(n), and the
    prediction interval of one more seed, mean +- t * sd * sqrt(1 + 1/n) (where a single new run, such as
    the quickstart, should fall); None for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "lo": None, "hi": None, "pred_lo": None, "pred_hi": None, "n": 1}
    t, sd = float(stats.t.ppf((1 + level) / 2, x.size - 1)), float(x.std(ddof=1))
    half, pred = t * sd / math.sqrt(x.size), t * sd * math.sqrt(1 + 1 / x.size)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "pred_lo": mean - pred, "pred_hi": mean + pred,
            "n": int(x.size)}


def solved_within(solved_turns: Sequence[int], k: int) -> np.ndarray:
    """1 where a problem was solved within k turns (its first solved turn in 1..k), else 0."""
    s = np.asarray(solved_turns)
    return ((s >= 1) & (s <= k)).astype(np.float64)


def paired_bootstrap(a_S: Sequence[np.ndarray], b_S: Sequence[np.ndarray], *, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0, level: float = LEVEL) -> dict[str, Any]:
    """Difference mean(a) - mean(b) of per-problem outcomes paired within each seed (a_S[s][i] and b_S[s][i]
    on the same problem): its value, the bootstrap percentile interval and two-sided p, resampling seeds,
    then problems within each drawn seed."""
    if len(a_S) != len(b_S) or any(np.shape(a) != np.shape(b) or np.size(a) == 0 for a, b in zip(a_S, b_S)):
        raise ValueError("a and b need the same seeds and, in each, outcomes on the same (one or more) problems")
    d_S = [np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in zip(a_S, b_S)]
    if not d_S:
        raise ValueError("no seeds")
    rng = np.random.default_rng(seed)
    seeds_BxS = rng.integers(0, len(d_S), size=(samples, len(d_S)))
    means_BxS = np.empty((samples, len(d_S)))
    for s, d in enumerate(d_S):
        # Resampling the seed's problems with replacement draws each distinct difference value a multinomial
        # number of times: the same distribution as drawing indices, without a samples x problems array.
        values, counts = np.unique(d, return_counts=True)
        drawn = seeds_BxS == s
        counts_DxV = rng.multinomial(d.size, counts / d.size, size=int(drawn.sum()))
        means_BxS[drawn] = counts_DxV @ values / d.size
    stats_B = means_BxS.mean(axis=1)
    diff = float(np.mean([d.mean() for d in d_S]))
    alpha = 1 - level
    lo, hi = np.quantile(stats_B, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(np.mean(stats_B <= 0), np.mean(stats_B >= 0)))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "p": float(p), "significant": bool(lo > 0 or hi < 0),
            "samples": samples}


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test on paired binary outcomes: problems only a solved, only b solved, two-sided p."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(min(1.0, 2 * stats.binom.cdf(min(a_only, b_only), n, 0.5)))
    return {"a_only": a_only, "b_only": b_only, "p": p}


# ----------------------------------------------------------------------------- reading the seeds


def _read_json(path: str) -> Any:
    return json.loads(epath.Path(path).read_text())


def load_seed(workdir: str) -> dict[str, Any]:
    """One seed's run: results.json's methods, and each method's per-problem first solved turns."""
    results = _read_json(os.path.join(workdir, "results.json"))
    methods = {}
    for name, entry in results["methods"].items():
        ev = _read_json(os.path.join(workdir, f"eval_{name}.json"))
        if "problem_ids" not in ev or "solved_turns" not in ev:
            raise ValueError(f"{workdir}/eval_{name}.json lacks problem_ids/solved_turns (per-problem outcomes)")
        methods[name] = {**entry, "problem_ids": ev["problem_ids"], "solved_turns": ev["solved_turns"]}
    stage_dir = epath.Path(workdir) / "stages"
    seconds = [_read_json(str(p))["summary"]["seconds"] for p in stage_dir.glob("*.json")
               if not p.name.endswith(".started.json")] if stage_dir.exists() else []
    # A record kept by tools/keep_run.py names the machine it ran on; a workdir ran on this one.
    prov = epath.Path(workdir) / "provenance.json"
    ran_on = _read_json(str(prov))["machine"] if prov.exists() else machine.describe()
    return {"workdir": workdir, "max_turns": results["max_turns"], "task": results.get("task"), "methods": methods,
            "run_seconds": float(sum(seconds)), "machine": ran_on}


def curve_at(curve: Sequence[Sequence[float]], seconds: float) -> float | None:
    """A learning curve's value at a wall time (its last point at or before it)."""
    before = [v for t, v in curve if t <= seconds]
    return before[-1] if before else None


def budget(entries: Sequence[Mapping[str, Any]]) -> str:
    """A method's training budget over seeds, as results.json records it: epochs (offline methods) or
    iterations (online RL), and the mean number of optimizer steps; "-" for an untrained method."""
    parts = []
    for key, unit in (("epochs", "epochs"), ("iterations", "iterations")):
        values = sorted({e[key] for e in entries if key in e})
        if values:
            if key == "iterations":
                parts.append(f"{np.mean([e[key] for e in entries if key in e]):.0f} {unit} (mean)")
            else:
                parts.append(f"{'/'.join(map(str, values))} {unit}")
    steps = [e["optimizer_steps"] for e in entries if "optimizer_steps" in e]
    if steps:
        parts.append(f"{np.mean(steps):.0f} optimizer steps")
    return ", ".join(parts) or "-"


def summarize(runs: Sequence[Mapping[str, Any]], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
              ) -> dict[str, Any]:
    """study.json's content from the seeds' runs (`load_seed`): intervals per method and metric, paired tests."""
    if not runs:
        raise ValueError("no seeds")
    turns = {r["max_turns"] for r in runs}
    if len(turns) != 1:
        raise ValueError(f"the seeds ran with different max_turns {sorted(turns)}")
    max_turns = turns.pop()
    names = sorted((m for m in runs[0]["methods"] if all(m in r["methods"] for r in runs)),
                   key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))
    metrics = [f"multi@{k}" for k in range(1, max_turns + 1)]
    methods: dict[str, Any] = {}
    for name in names:
        entries = [r["methods"][name] for r in runs]
        methods[name] = {m: {**t_interval([e[m] for e in entries]), "per_seed": [e[m] for e in entries]}
                         for m in (*metrics, "wall_seconds")}
        methods[name]["budget"] = budget(entries)
    if "online_rl" in names and "drift" in names:  # online RL at DRIFT's wall time: its curve, not paired
        at = [curve_at(r["methods"]["online_rl"].get("curve", []), r["methods"]["drift"]["wall_seconds"]) for r in runs]
        if all(v is not None for v in at):
            methods["online_rl@drift_time"] = {metrics[-1]: {**t_interval(at), "per_seed": at}}
    comparisons = []
    for a, b in itertools.combinations(names, 2):
        for r in runs:
            if r["methods"][a]["problem_ids"] != r["methods"][b]["problem_ids"]:
                raise ValueError(f"{r['workdir']}: {a} and {b} were evaluated on different problems")
        for metric, k in ((metrics[-1], max_turns), (metrics[0], 1)) if max_turns > 1 else ((metrics[0], 1),):
            a_S = [solved_within(r["methods"][a]["solved_turns"], k) for r in runs]
            b_S = [solved_within(r["methods"][b]["solved_turns"], k) for r in runs]
            comparisons.append({"a": a, "b": b, "metric": metric,
                                **paired_bootstrap(a_S, b_S, samples=samples, seed=seed),
                                "mcnemar": mcnemar(np.concatenate(a_S), np.concatenate(b_S))})
    study = {
        "seeds": len(runs), "workdirs": [r["workdir"] for r in runs], "task": runs[0].get("task"),
        "max_turns": max_turns, "methods": methods, "comparisons": comparisons,
        "run_seconds": t_interval([r["run_seconds"] for r in runs]) | {"per_seed": [r["run_seconds"] for r in runs]},
        "problems_per_seed": [len(r["methods"][names[0]]["problem_ids"]) for r in runs] if names else [],
        "interval": f"{int(100 * LEVEL)}% Student t interval over seeds (n - 1 degrees of freedom)",
        "test": ("paired bootstrap of the difference in multi@k: seeds resampled, then problems within each seed; "
                 f"{samples} samples (seed {seed}); significant: the {int(100 * LEVEL)}% percentile interval "
                 "excludes 0 (uncorrected). mcnemar: exact test on the pooled (seed, problem) pairs"),
        "machine": runs[0].get("machine") or machine.describe(),  # the first seed's; every seed's in `machines`
        "machines": [r.get("machine") or machine.describe() for r in runs],
    }
    return {**study, "machines_summary": machines(study)}


# ----------------------------------------------------------------------------- the report


def machines(study: Mapping[str, Any]) -> str:
    """The machines the seeds ran on, with the seeds each ran where there were several:
    "AMD EPYC (2 CPU cores, Linux-...) (seed-1, seed-2); ..."."""
    seeds: dict[str, list[str]] = {}
    for workdir, m in zip(study["workdirs"], study.get("machines") or [study["machine"]] * study["seeds"]):
        seeds.setdefault(f"{m['processor']} ({m['cpus']} CPU cores, {m['platform']})", []).append(seed_name(workdir))
    if len(seeds) == 1:
        return next(iter(seeds))
    return "; ".join(f"{name} ({', '.join(s)})" for name, s in seeds.items())


def pct(x: float | None, sign: bool = False) -> str:
    """A fraction as a percentage with one decimal ("-" for None); `sign` writes the + of a difference."""
    return "-" if x is None else (f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}")


def seed_name(workdir: str) -> str:
    """A run's name in tables: its workdir's last component (`.../seed-1/` -> `seed-1`)."""
    return workdir.rstrip("/").split("/")[-1]


def _cell(s: Mapping[str, Any]) -> str:
    return pct(s["mean"]) if s["lo"] is None else f"{pct(s['mean'])} [{pct(s['lo'])}, {pct(s['hi'])}]"


def markdown(study: Mapping[str, Any]) -> str:
    """study.md: the methods' table (mean [95% interval], %), and every paired comparison, significant ones marked."""
    t = study["max_turns"]
    metrics = [f"multi@{k}" for k in range(1, t + 1)]
    lines = [f"# Study over {study['seeds']} seeds", "",
             (f"Held-out multi@k in %, mean [{study['interval']}]. Wall seconds per method are the method's own "
              "cost (online RL: sampling and training)."), "",
             "| method | " + " | ".join(metrics) + " | wall s | budget |", "|" + "---|" * (t + 3)]
    for name, m in study["methods"].items():
        cells = [_cell(m[k]) if k in m else "-" for k in metrics]
        wall = f"{m['wall_seconds']['mean']:.0f}" if "wall_seconds" in m else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {wall} | {m.get('budget', '-')} |")
    key = metrics[-1]
    new = [f"{n} [{pct(m[key]['pred_lo'])}, {pct(m[key]['pred_hi'])}]" for n, m in study["methods"].items()
           if key in m and m[key].get("pred_lo") is not None]
    if new:
        lines += ["", f"One new seed, {key}, 95% prediction interval: " + "; ".join(new) + "."]
    lines += ["", "## Paired comparisons (same held-out problems per seed)", "", study["test"] + ".", "",
              "| a vs b | metric | a - b | 95% interval | p (bootstrap) | McNemar p | |", "|---|---|---|---|---|---|---|"]
    for c in study["comparisons"]:
        mark = "**significant**" if c["significant"] else "not significant"
        lines.append(f"| {c['a']} vs {c['b']} | {c['metric']} | {100 * c['diff']:+.1f} | "
                     f"[{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}] | {c['p']:.3f} | {c['mcnemar']['p']:.3g} | {mark} |")
    rs = study["run_seconds"]
    lines += ["", f"Machines: {study.get('machines_summary') or machines(study)}; a seed's stages took {rs['mean'] / 60:.1f} min on average."]
    return "\n".join(lines) + "\n"


def write_study(workdirs: Sequence[str], out_dir: str, **kw) -> dict[str, Any]:
    study = summarize([load_seed(w) for w in workdirs], **kw)
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study, indent=2))
    (out / "study.md").write_text(markdown(study))
    return study


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m drift_jax.evaluation.study OUT_DIR SEED_WORKDIR...")
    print(markdown(write_study(sys.argv[2:], sys.argv[1])))
