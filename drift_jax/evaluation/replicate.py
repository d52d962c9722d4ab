"""Whether new runs land where a kept study predicts: each method's score and DRIFT's paired differences.

    python -m drift_jax.evaluation.replicate STUDY_JSON RUN_WORKDIR... [--out DIR]
    python -m drift_jax.evaluation.replicate docs/results/study/study.json runs/quickstart

A study (drift_jax/evaluation/study.py) states, per method and metric, the 95% prediction interval of one
more seed: mean +- t_{0.975, n-1} * sd * sqrt(1 + 1/n) over its n seeds. Each run given here (a quickstart
workdir, or a seed of `launch/study.sh`, kept or not) is checked against those intervals, for
- every method's multi@1 and multi@T (and online RL's dev curve at DRIFT's wall time, multi@T), and
- DRIFT minus each other method, multi@T on the run's own problems: the study's per-seed differences give
  their own prediction interval (seeds move methods together, so a difference varies less than a score).
A run made with seeds the study used is not a new seed: it says so, and is checked all the same.
With DIR, writes DIR/replication.json and replication.md. Exit status 1 when some value lands outside, 2 when
the runs are not comparable with the study (another task or number of turns).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from drift_jax.evaluation import study as study_lib


def _inside(value: float, interval: Mapping[str, Any]) -> bool | None:
    """Whether `value` lies in the interval's prediction bounds; None where it has none (one seed)."""
    if interval.get("pred_lo") is None:
        return None
    return interval["pred_lo"] <= value <= interval["pred_hi"]


def run_seed(workdir: str) -> int | None:
    """The seed a run was made with: its config (kept, or the last in run_configs/), else a `seed-N` directory
    name (a study's records elsewhere); None when neither says."""
    path = epath.Path(workdir)
    configs = [path / "config.json"] if (path / "config.json").exists() else sorted((path / "run_configs").glob("*.json"))
    if configs:
        return json.loads(configs[-1].read_text()).get("seed")
    tail = study_lib.seed_name(workdir).rpartition("seed-")[2]
    return int(tail) if tail.isdigit() else None


def check(study: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], *,
          seeds: Sequence[int | None] | None = None, study_seeds: Sequence[int] = ()) -> dict[str, Any]:
    """replication.json's content: each run's values against the study's prediction intervals.

    `runs` are study.load_seed records; `seeds` the seed each was made with, `study_seeds` the study's."""
    t = study["max_turns"]
    for r in runs:
        if r["max_turns"] != t or (study.get("task") and r.get("task") and r["task"] != study["task"]):
            raise ValueError(f"{r['workdir']} ran another task or max_turns than the study "
                             f"({r.get('task')}, {r['max_turns']} turns vs {study.get('task')}, {t}): no prediction applies")
    key = f"multi@{t}"
    metrics = ["multi@1", key] if t > 1 else [key]
    rows: list[dict[str, Any]] = []
    for name, s in study["methods"].items():
        for metric in metrics if name != "online_rl@drift_time" else [key]:
            if metric not in s:
                continue
            values = []
            for r in runs:
                if name == "online_rl@drift_time":
                    m = r["methods"]
                    v = (study_lib.curve_at(m["online_rl"].get("curve", []), m["drift"]["wall_seconds"])
                         if "online_rl" in m and "drift" in m else None)
                else:
                    v = r["methods"].get(name, {}).get(metric)
                values.append(v)
            rows.append(_row(name, metric, values, s[metric]))
    if "drift" in study["methods"]:
        d = study["methods"]["drift"][key]["per_seed"]
        for other, s in study["methods"].items():
            if other in ("drift", "online_rl@drift_time") or key not in s:
                continue
            predicted = study_lib.t_interval([a - b for a, b in zip(d, s[key]["per_seed"])])
            values = []
            for r in runs:
                m = r["methods"]
                if "drift" not in m or other not in m:
                    values.append(None)
                    continue
                if m["drift"]["problem_ids"] != m[other]["problem_ids"]:
                    raise ValueError(f"{r['workdir']}: drift and {other} were evaluated on different problems")
                values.append(m["drift"][key] - m[other][key])  # paired: the same problems
            rows.append(_row(f"drift - {other}", key, values, predicted))
    seeds = list(seeds) if seeds is not None else [None] * len(runs)
    checked = [x for row in rows for x in row["inside"] if x is not None]
    return {"study_seeds": list(study_seeds), "study_n": study["seeds"], "max_turns": t,
            "runs": [r["workdir"] for r in runs], "run_seeds": seeds,
            "new_seeds": [s is not None and s not in study_seeds for s in seeds],
            "rows": rows, "checked": len(checked), "outside": sum(not x for x in checked)}


def _row(what: str, metric: str, values: Sequence[float | None], interval: Mapping[str, Any]) -> dict[str, Any]:
    return {"what": what, "metric": metric, "values": list(values), "mean": interval["mean"],
            "pred_lo": interval.get("pred_lo"), "pred_hi": interval.get("pred_hi"),
            "inside": [None if v is None else _inside(v, interval) for v in values]}


def markdown(rep: Mapping[str, Any]) -> str:
    """replication.md: a row per method or difference, each run's value and whether it lies in the interval."""
    names = [study_lib.seed_name(w) for w in rep["runs"]]
    lines = [f"# New runs against the study's {rep['study_n']}-seed prediction intervals", "",
             "| method | metric | study mean | 95% prediction interval | " + " | ".join(names) + " |",
             "|" + "---|" * (4 + len(names))]
    for row in rep["rows"]:
        sign = row["what"].startswith("drift - ")

        def pct(x: float | None) -> str:
            return study_lib.pct(x, sign)

        cells = [pct(v) if ok is None else f"{pct(v)} ({'in' if ok else 'OUT'})"
                 for v, ok in zip(row["values"], row["inside"])]
        lines.append(f"| {row['what']} | {row['metric']} | {pct(row['mean'])} | "
                     f"[{pct(row['pred_lo'])}, {pct(row['pred_hi'])}] | " + " | ".join(cells) + " |")
    old = [n for n, new, s in zip(names, rep["new_seeds"], rep["run_seeds"]) if not new]
    lines += ["", f"{rep['checked'] - rep['outside']} of {rep['checked']} values inside their interval (each lies "
              "outside with probability 1 in 20 by chance alone; the values of one run are not independent)."]
    if old:
        lines.append(f"Not new seeds (the study used them, or their seed is unknown): {', '.join(old)}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study.json of the kept study (e.g. docs/results/study/study.json)")
    p.add_argument("runs", nargs="+", help="workdirs of new runs (quickstart, or study seeds, kept or not)")
    p.add_argument("--out", help="write DIR/replication.json and replication.md")
    args = p.parse_args(argv)
    study = json.loads(epath.Path(args.study).read_text())
    study_seeds = [s for s in map(run_seed, study["workdirs"]) if s is not None]
    if len(study_seeds) < len(study["workdirs"]):  # neither a config nor a seed-N name: cannot tell new seeds
        print(f"warning: {len(study['workdirs']) - len(study_seeds)} of the study's seeds cannot be identified "
              "(no config.json, no seed-N name); a run with one of those seeds would count as new", file=sys.stderr)
    try:
        rep = check(study, [study_lib.load_seed(w) for w in args.runs], seeds=[run_seed(w) for w in args.runs],
                    study_seeds=study_seeds)
    except ValueError as e:  # another task, turns or problem pairing: nothing to compare
        print(f"not compared with {args.study}: {e}", file=sys.stderr)
        return 2
    text = markdown(rep)
    if args.out:
        out = epath.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "replication.json").write_text(json.dumps({"study": args.study, **rep}, indent=2))
        (out / "replication.md").write_text(text)
    print(text)
    return 1 if rep["outside"] else 0


if __name__ == "__main__":
    sys.exit(main())
