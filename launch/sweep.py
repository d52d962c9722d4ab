"""Expands a sweep config into one run per point and launches them one after another (or prints them).

    python launch/sweep.py --sweep=configs/sweep_beta_gamma.py --base=configs/quickstart.py --workdir=runs/sweep
    python launch/sweep.py ... --dry_run                   # just print the commands (e.g. to submit elsewhere)
Each point runs `python -m drift_jax.main --config=BASE --workdir=WORKDIR/<point> --config.k=v ...`; a
rerun resumes every point (stages are cached per workdir). A results table is printed at the end.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys


def load_sweep(path: str) -> list[dict]:
    spec = importlib.util.spec_from_file_location("sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_sweep()


def point_name(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--dry_run", action="store_true")
    args, extra = p.parse_known_args()
    rows = []
    for point in load_sweep(args.sweep):
        workdir = os.path.join(args.workdir, point_name(point).replace("/", "_"))
        cmd = [sys.executable, "-m", "drift_jax.main", f"--config={args.base}", f"--workdir={workdir}"]
        cmd += [f"--config.{k}={v}" for k, v in point.items()] + extra
        print(" ".join(cmd), flush=True)
        if args.dry_run:
            continue
        subprocess.run(cmd, check=True)
        with open(os.path.join(workdir, "results.json")) as f:
            rows.append((point_name(point), json.load(f)["methods"]))
    for name, methods in rows:
        print(name, {m: round(100 * r[max((k for k in r if k.startswith("multi@")), key=lambda k: int(k[6:]))], 1) for m, r in methods.items()})


if __name__ == "__main__":
    main()
