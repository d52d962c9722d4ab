"""Keeps a finished pipeline run's record in a directory that is committed, so a study or tuning grid can span sessions and machines.

A run's workdir holds checkpoints, rollouts and logs (megabytes to gigabytes); its *record* is what the study
and the tuning read from it: results.json, report.md, every eval_<method>.json (per-problem outcomes, for the
paired tests), the stage markers (configs read, digests, seconds), the run's config, and provenance.json (the
commit, the trees of drift_jax/ and configs/, the lock's hash, the machine). Optionally the reference policy
(`reference/hf`, 2 MB at the quickstart's size) so later runs can start from the same reference.

    python tools/keep_run.py keep runs/study/seed-0 docs/results/study/seed-0
    python tools/keep_run.py check docs/results/study/seed-*     # same code and config but for the seed

Records from different code (drift_jax/ or configs/ trees) or different configs (the seed aside) are not
comparable: `check` says which differ, and a record kept from uncommitted code is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from drift_jax.runtime import machine  # noqa: E402  (jax-free: the machine, as results and studies name it)

CODE = ("drift_jax", "configs")  # the trees a run's numbers depend on (README or launcher edits do not count)
LOCK = "requirements.lock"
# The config keys that may differ between comparable records: the seed, and what only says where or how
# loudly a run logs.
FREE_KEYS = ("seed", "reference.train.progress_bar", "train.progress_bar")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def commit_label() -> str:
    """The short commit, with "+" when tracked files were changed; "unknown" outside a git checkout."""
    try:
        return _git("rev-parse", "--short", "HEAD") + ("+" if _git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    """Where the code that ran came from: commit, the code trees (equal trees: equal code), uncommitted code
    changes, the lock, the machine."""
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE)
    return {"commit": _git("rev-parse", "HEAD"), "code": {d: _git("rev-parse", f"HEAD:{d}") for d in CODE},
            "dirty": bool(dirty), "lock_sha256": hashlib.sha256((ROOT / LOCK).read_bytes()).hexdigest(),
            "machine": machine.describe()}


def _latest_config(workdir: pathlib.Path) -> dict[str, Any]:
    configs = sorted((workdir / "run_configs").glob("*.json"))  # <UTC time>-<pid>.json: the last run is last
    if not configs:
        raise FileNotFoundError(f"{workdir}/run_configs is empty: not a pipeline run")
    return json.loads(configs[-1].read_text())


def keep(workdir: str, dest: str, *, with_reference: bool = False, allow_dirty: bool = False) -> dict[str, Any]:
    """Copies `workdir`'s record (and its reference policy) into `dest`, which must not hold another run."""
    src, out = pathlib.Path(workdir), pathlib.Path(dest)
    if not (src / "results.json").exists():
        raise FileNotFoundError(f"{workdir} has no results.json: the run has not finished")
    prov = provenance()
    if prov["dirty"] and not allow_dirty:
        raise RuntimeError(f"{', '.join(CODE)} have uncommitted changes: commit first, so the record names "
                           "the code it came from")
    if out.exists():
        shutil.rmtree(out)
    (out / "stages").mkdir(parents=True)
    for name in ("results.json", "report.md"):
        if (src / name).exists():
            shutil.copy2(src / name, out / name)
    for path in src.glob("eval_*.json"):
        shutil.copy2(path, out / path.name)
    for path in (src / "stages").glob("*.json"):
        if not path.name.endswith(".started.json"):  # markers of finished stages only
            shutil.copy2(path, out / "stages" / path.name)
    (out / "config.json").write_text(json.dumps(_latest_config(src), indent=2))
    if with_reference:
        shutil.copytree(src / "reference" / "hf", out / "reference" / "hf")
    (out / "provenance.json").write_text(json.dumps({**prov, "workdir": str(workdir)}, indent=2))
    return prov


def _without(config: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(config))
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def check(dirs: Sequence[str], *, free_keys: Sequence[str] | None = FREE_KEYS, code: dict[str, str] | None = None
          ) -> list[str]:
    """What makes the kept records `dirs` incomparable (empty: comparable): other code trees or lock than the
    first (or than `code`), uncommitted code, or configs that differ beyond `free_keys` (None: configs are
    not compared, as between a tuning grid's points)."""
    problems: list[str] = []
    first = None
    for d in dirs:
        prov = json.loads((pathlib.Path(d) / "provenance.json").read_text())
        config = _without(json.loads((pathlib.Path(d) / "config.json").read_text()), free_keys or ())
        if prov["dirty"]:
            problems.append(f"{d}: kept from uncommitted code")
        want = code if code is not None else (first or {}).get("code")
        if want is not None and prov["code"] != want:
            problems.append(f"{d}: code {prov['code']} differs from {want}")
        if first is None:
            first = {"dir": d, "config": config, "code": prov["code"], "lock": prov["lock_sha256"]}
            continue
        if prov["lock_sha256"] != first["lock"]:
            problems.append(f"{d}: installed from another {LOCK} than {first['dir']}")
        if free_keys is not None and config != first["config"]:
            problems.append(f"{d}: config differs from {first['dir']}'s beyond {', '.join(free_keys)}")
    return problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keep", help="copy WORKDIR's record into DEST")
    k.add_argument("workdir")
    k.add_argument("dest")
    k.add_argument("--with_reference", action="store_true", help="also keep reference/hf (the reference policy)")
    c = sub.add_parser("check", help="exit 1 unless the records were made by the same code and config")
    c.add_argument("dirs", nargs="+")
    args = p.parse_args()
    if args.cmd == "keep":
        prov = keep(args.workdir, args.dest, with_reference=args.with_reference)
        print(f"kept {args.workdir} -> {args.dest} (commit {prov['commit'][:8]})")
        return
    problems = check(args.dirs)
    if problems:
        sys.exit("the kept records are not comparable:\n  " + "\n  ".join(problems))
    print(f"{len(args.dirs)} records: same code and config (the seed aside)")


if __name__ == "__main__":
    main()
