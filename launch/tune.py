"""Chooses the quickstart's tuned values on the dev split, never the test split, and saves every result.

    python launch/tune.py --workdir=runs/tune                                  # every group, seed 0
    python launch/tune.py --workdir=runs/tune --groups=all_fail,beta --seeds=0,1
    python launch/tune.py --workdir=runs/tune --dry_run                        # print the runs only
    python launch/tune.py --workdir=runs/tune --config.rollout.num_problems=256  # extra flags go to every run

Groups (GROUPS below): DRIFT's all-fail policy and beta, the offline methods' epochs (`budgets.<method>`;
each method's best on dev is its budget: drift, sft_rollouts, rft, sft), online RL's kl_coef x lr (at 4x
DRIFT's wall time). Each group varies its values from the base config (one knob at a time, not jointly);
the chosen values go into the base config by hand, with tune.json beside them. Each point
is `python -m drift_jax.main --config=BASE --workdir=WORKDIR/seed-S/<group>/<point> --config.seed=S
--config.eval.split=dev <overrides>`: every method is evaluated on the dev problems (disjoint from train and
test). Per seed, a `base` point (the config as it is, reference and DRIFT) runs first; every other point
starts from hard links of its stages, and `--on_change=recompute` reruns only the stages its overrides
change (the reference, its rollouts and their dev evaluation are computed once per seed).

Writes WORKDIR/tune.json (every point's dev multi@k per method and seed, and the value each group chose by
the mean over seeds of multi@max_turns) and WORKDIR/tune.md; a rerun resumes (finished points are cached).
Groups tuned in earlier calls stay in tune.json as they were, each with the commit and base results it ran
from: groups run one after another, each from the base config with the earlier groups' choices applied
(coordinate ascent), and a group is rerun only when named in --groups.

Online RL's points are equal in compute, not in seconds: the config's point runs 4x DRIFT's wall time, and
every other point as many iterations as it ran (without DRIFT), so a grid finished on another machine, or
at another load, compares like with like.

A grid longer than a machine lives (online RL's: 25-60 min a point on 2 cores) spans sessions with
`--keep=DIR` (commit DIR after each point): the base run's record and reference policy, and each finished
point's record, are kept there (tools/keep_run.py). A later call with the same --keep reads the kept points
instead of running them and starts the rest from the kept reference policy, after checking that the code
(drift_jax/, configs/) is the code they were kept from.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import keep_run  # noqa: E402  (tools/keep_run.py: a run's record, kept where it is committed)

OFFLINE = ("drift", "sft_rollouts", "rft", "sft")
# group: (methods run, methods the choice is made for, points as {dotted config key: value}).
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...], list[dict[str, Any]]]] = {
    "all_fail": (("reference", "drift"), ("drift",), [{"drift.all_fail": v} for v in ("keep", "drop", "batch")]),
    "beta": (("reference", "drift"), ("drift",), [{"drift.beta": v} for v in (0.03, 0.1, 0.3, 1.0)]),
    # Epochs: the same grid, hence the same cap, for every offline method (a point runs only the methods it
    # sets a budget for: a grid may be extended for one method without rerunning the others).
    "epochs": (("reference", *OFFLINE), OFFLINE, [{f"budgets.{m}": v for m in OFFLINE} for v in (1, 2, 3, 5, 8, 12)]),
    # Online RL: a coordinate grid through the config's values (kl_coef 0.01, lr 1e-3), the config's point
    # first; each point runs 4x DRIFT's wall time (DRIFT's stages are the base run's, so every point has the
    # same budget), extended up to 2x while its dev curve rises: ~20-40 min each on 2 cores.
    "online_rl": (("reference", "drift", "online_rl"), ("online_rl",),
                  [{"online_rl.kl_coef": k, "online_rl.train.lr": lr}
                   for k, lr in ((0.01, 1e-3), (0.0, 1e-3), (0.1, 1e-3), (0.01, 3e-4), (0.01, 2e-3))]),
}
# Groups whose points after the first run as many iterations as the first ran (its budget: 4x DRIFT's wall
# time), without DRIFT: {group: the method whose iterations are matched}.
MATCHED_ITERATIONS = {"online_rl": "online_rl"}
UNBOUNDED_SECONDS = 1e9  # a matched point's time budget: its iterations alone end it
# What the base run keeps out of the points it is linked into (they write their own).
_NOT_LINKED = ("run_configs", "replaced", "results.json", "report.md", "report.png", "preflight.json")


def point_name(overrides: dict[str, Any]) -> str:
    """`key=value,...`; one value given to every method's budget is `budgets=value`."""
    if len(overrides) > 1 and all(k.startswith("budgets.") for k in overrides) and len(set(overrides.values())) == 1:
        return f"budgets={next(iter(overrides.values()))}"
    return ",".join(f"{k}={v}" for k, v in overrides.items()).replace("/", "_") or "base"


def point_methods(methods: tuple[str, ...], overrides: dict[str, Any]) -> tuple[str, ...]:
    """The methods a point runs: where it sets budgets, the reference and the methods it sets one for."""
    if not any(k.startswith("budgets.") for k in overrides):
        return methods
    return tuple(m for m in methods if m == "reference" or f"budgets.{m}" in overrides)


def command(base: str, workdir: str, seed: int, methods: tuple[str, ...], overrides: dict[str, Any],
            extra: list[str]) -> list[str]:
    """The pipeline run of one point: evaluated on dev, the seed and methods set, overrides last."""
    return [sys.executable, "-m", "drift_jax.main", f"--config={base}", f"--workdir={workdir}",
            f"--config.seed={seed}", "--config.eval.split=dev", f"--config.methods={tuple(methods)!r}".replace(" ", ""),
            "--on_change=recompute", *extra, *(f"--config.{k}={v}" for k, v in overrides.items())]


def link_stages(src: str, dst: str) -> None:
    """Hard links of every stage output and marker of `src` in `dst` (a fresh point): equal digests, so the
    stages whose config values are unchanged are cached there, and no byte is copied."""
    if os.path.exists(os.path.join(dst, "stages")):
        return  # the point ran (or started) before: its own stages
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name in _NOT_LINKED or name.startswith("."):
            continue
        path = os.path.join(src, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(dst, name), copy_function=os.link)
        else:
            os.link(path, os.path.join(dst, name))


def dev_results(workdir: str) -> dict[str, dict[str, float]]:
    """{method: {multi@k: value, wall_seconds, iterations (online RL)}} of a finished point's results.json."""
    with open(os.path.join(workdir, "results.json")) as f:
        methods = json.load(f)["methods"]
    return {m: {k: v for k, v in r.items() if k.startswith("multi@") or k in ("wall_seconds", "iterations")}
            for m, r in methods.items()}


def matched(group: str, methods: tuple[str, ...], first: dict[Any, Any] | None) -> tuple[tuple[str, ...], dict[str, Any]]:
    """A point's methods and extra overrides in a matched-iterations group, given the first point's results
    per seed: the first point's iterations (their mean over seeds, rounded), no DRIFT, no time limit."""
    method = MATCHED_ITERATIONS[group]
    iterations = [r[method]["iterations"] for r in (first or {}).values() if r]
    if not iterations:
        raise RuntimeError(f"{group}: the first point failed on every seed, so there is no budget to match")
    return (tuple(m for m in methods if m != "drift"),
            {f"{method}.max_iterations": round(sum(iterations) / len(iterations)),
             f"{method}.budget_seconds": UNBOUNDED_SECONDS})


def restore_base(kept: str, base: str) -> None:
    """The kept base's reference policy and its stage markers (reference, eval_reference), copied into an
    empty base workdir: the points then start from that reference (equal digests: cached), not a new one."""
    if os.path.exists(os.path.join(base, "stages", "reference.json")):
        return
    os.makedirs(os.path.join(base, "stages"), exist_ok=True)
    shutil.copytree(os.path.join(kept, "reference", "hf"), os.path.join(base, "reference", "hf"))
    for name in ("reference", "eval_reference"):
        shutil.copy2(os.path.join(kept, "stages", f"{name}.json"), os.path.join(base, "stages", f"{name}.json"))
    shutil.copy2(os.path.join(kept, "eval_reference.json"), os.path.join(base, "eval_reference.json"))


def choose(points: list[dict[str, Any]], methods: tuple[str, ...], metric: str) -> dict[str, Any]:
    """Per method, the point with the highest mean over seeds of `metric` (ties: the earlier point)."""
    chosen = {}
    for m in methods:
        # A point that failed on some seed is not chosen: its mean would be over fewer seeds.
        scored = [(p["mean"][m], -i, p) for i, p in enumerate(points) if m in p.get("mean", {}) and not p["failed_seeds"]]
        if scored:
            value, _, best = max(scored, key=lambda s: s[:2])
            chosen[m] = {"overrides": best["overrides"], metric: value}
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--base", default="configs/quickstart.py")
    p.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of {', '.join(GROUPS)}")
    p.add_argument("--seeds", default="0", help="comma-separated; choices use the mean over them")
    p.add_argument("--keep", default="", help="a directory (committed) that keeps the base and each finished "
                   "point, so the grid spans sessions; see the module docstring")
    p.add_argument("--parallel", type=int, default=1, help="online RL's matched points (an iteration budget, "
                   "not a time budget) run this many at once; points on a time budget always run alone")
    p.add_argument("--dry_run", action="store_true")
    args, extra = p.parse_known_args()
    groups = [g for g in args.groups.split(",") if g]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        sys.exit(f"unknown groups {sorted(unknown)}; known: {', '.join(GROUPS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    summary: dict[str, Any] = {"base": args.base, "split": "dev", "seeds": seeds, "extra_flags": extra, "groups": {}}
    earlier = os.path.join(args.workdir, "tune.json")
    if os.path.exists(earlier) and not args.dry_run:  # groups not rerun now keep their earlier record
        with open(earlier) as f:
            before = json.load(f)
        if (before["base"], before["seeds"], before["extra_flags"]) != (args.base, seeds, extra):
            sys.exit(f"{earlier} was tuned from {before['base']} with seeds {before['seeds']} and flags "
                     f"{before['extra_flags']}: use another --workdir, or the same base, seeds and flags")
        summary["groups"] = {g: {"base_results": before["base_results"], **v}  # older records: the call's base
                             for g, v in before["groups"].items() if g not in groups}

    def kept(workdir: str) -> str | None:
        """Where `workdir` (under --workdir) is kept, if --keep is given."""
        return os.path.join(args.keep, os.path.relpath(workdir, args.workdir)) if args.keep else None

    def run(workdir: str, seed: int, methods, overrides, *, with_reference: bool = False) -> dict[str, Any] | None:
        keep_dir = kept(workdir)
        if keep_dir and os.path.exists(os.path.join(keep_dir, "results.json")) and not args.dry_run:
            print(f"[tune] {workdir}: kept in {keep_dir}, not run again", flush=True)
            return dev_results(keep_dir)
        cmd = command(args.base, workdir, seed, methods, overrides, extra)
        print(" ".join(cmd), flush=True)
        if args.dry_run:
            return None
        if subprocess.run(cmd, check=False).returncode != 0:  # e.g. all_fail=drop, no success: recorded, not fatal
            print(f"[tune] {workdir} failed; recorded as failed", flush=True)
            return None
        if keep_dir:
            keep_run.keep(workdir, keep_dir, with_reference=with_reference)
        return dev_results(workdir)

    bases = {s: os.path.join(args.workdir, f"seed-{s}", "base") for s in seeds}
    if args.keep and not args.dry_run:  # kept records from other code are not comparable with new points
        records = sorted(d for d, _, names in os.walk(args.keep) if "provenance.json" in names)
        problems = keep_run.check(records, free_keys=None, code=keep_run.provenance()["code"])
        if problems:
            sys.exit(f"--keep={args.keep} holds records not made by this code; use another --keep:\n  "
                     + "\n  ".join(problems))
        for s in seeds:
            if os.path.exists(os.path.join(kept(bases[s]), "results.json")):
                restore_base(kept(bases[s]), bases[s])
    summary["base_results"] = {s: run(bases[s], s, ("reference", "drift"), {}, with_reference=True) for s in seeds}
    failed = [s for s, r in summary["base_results"].items() if r is None and not args.dry_run]
    if failed:
        sys.exit(f"the base run failed for seeds {failed} (see above): every point starts from it")
    metric = "multi@?"
    if not args.dry_run:  # multi@max_turns of the runs (the base config's max_turns, or an extra flag's)
        first = bases[seeds[0]]
        if args.keep and os.path.exists(os.path.join(kept(first), "results.json")):
            first = kept(first)  # the base was not run here
        with open(os.path.join(first, "results.json")) as f:
            metric = f"multi@{json.load(f)['max_turns']}"
    summary["metric"] = metric
    for g in groups:
        methods, decides, grid = GROUPS[g]
        points, commit = [], keep_run.commit_label()  # the code and base config the group's points run

        def run_point(point: dict[str, Any], ran: tuple[str, ...], budget: dict[str, Any]) -> None:
            for s in seeds:
                workdir = os.path.join(args.workdir, f"seed-{s}", g, point["name"])
                if not args.dry_run:
                    link_stages(bases[s], workdir)
                point["results"][s] = run(workdir, s, ran, {**point["overrides"], **budget})
            if not args.dry_run:
                done = [point["results"][s] for s in seeds if point["results"][s] is not None]
                point["failed_seeds"] = [s for s in seeds if point["results"][s] is None]
                point["mean"] = {m: sum(r[m][metric] for r in done) / len(done) for m in ran} if done else {}

        # Matched points end by their iterations, not by a clock: --parallel of them may share the machine.
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            pending = []
            for i, overrides in enumerate(grid):
                point = {"name": point_name(overrides), "overrides": overrides, "results": {}}
                ran, budget = point_methods(methods, overrides), {}
                if g in MATCHED_ITERATIONS and i > 0 and not args.dry_run:
                    ran, budget = matched(g, ran, points[0]["results"])
                    point["budget_overrides"] = budget
                point["methods_run"] = ran
                points.append(point)
                if budget:
                    pending.append(pool.submit(run_point, point, ran, budget))
                else:  # a point on a time budget runs alone
                    for f in pending:
                        f.result()
                    pending = []
                    run_point(point, ran, budget)
            for f in pending:
                f.result()
        summary["groups"][g] = {"methods": methods, "decides": decides, "points": points, "commit": commit,
                                "base_results": summary["base_results"],
                                "chosen": {} if args.dry_run else choose(points, decides, metric)}
        if not args.dry_run:
            write(args.workdir, summary)
    if not args.dry_run:
        with open(os.path.join(args.workdir, "tune.md")) as f:
            print(f.read())


def write(workdir: str, summary: dict[str, Any]) -> None:
    """tune.json (everything) and tune.md (a table per group, the choice marked)."""
    with open(os.path.join(workdir, "tune.json"), "w") as f:
        json.dump(summary, f, indent=2)
    metric = summary["metric"]
    lines = [f"# Tuning on the dev split ({metric}, mean over seeds {summary['seeds']})", "",
             f"Base config {summary['base']}; extra flags {' '.join(summary['extra_flags']) or 'none'}.", ""]
    for g, group in summary["groups"].items():
        methods = group["methods"]
        runs = [r for r in (group.get("base_results") or {}).values() if r]
        base = "; ".join(", ".join(f"{m} {100 * v[metric]:.1f}" for m, v in r.items() if metric in v) for r in runs)
        lines += [f"## {g} (chosen for {', '.join(group['decides'])})", ""]
        if "commit" in group:  # groups tuned before this was recorded have none
            lines += [f"From the base config at commit {group['commit']}" + (f" (base run: {base})" if base else "") + ".", ""]
        lines += ["| point | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
        for point in group["points"]:
            cells = []
            for m in methods:
                best = group["chosen"].get(m, {}).get("overrides") == point["overrides"]
                ran = m in point.get("methods_run", point_methods(methods, point["overrides"]))
                value = f"{100 * point['mean'][m]:.1f}" if m in point["mean"] else ("failed" if ran else "-")
                cells.append(f"**{value}**" if best else value)
            lines.append(f"| {point['name']} | " + " | ".join(cells) + " |")
        budgets = {v for p in group["points"] for k, v in p.get("budget_overrides", {}).items() if k.endswith(".max_iterations")}
        if budgets:  # a matched-iterations group
            lines += ["", f"Points after the first: {', '.join(map(str, sorted(budgets)))} iterations each, no time "
                      "limit, no DRIFT (the first point's iterations in 4x DRIFT's wall time, its DRIFT the base run's)."]
        lines += [""] + [f"- {m}: {point_name(c['overrides'])} ({100 * c[metric]:.1f})" for m, c in group["chosen"].items()]
        lines.append("")
    with open(os.path.join(workdir, "tune.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
