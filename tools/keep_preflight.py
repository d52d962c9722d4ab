"""Runs `python -m drift_jax.preflight` and keeps its table with the commit and machine it came from.

    python tools/keep_preflight.py docs/results/preflight/paper_qwen2_5_3b_v5e_4x8.json -- \
        --config=configs/paper_qwen2_5_3b.py --topology=v5e:4x8 --config.model.preset=qwen2_5_3b

The record (JSON: the command, its stdout, the seconds it took, keep_run's provenance) is what the README's
example preflight table is generated from (`python tools/readme_results.py --preflight RECORD`), so the table
in the README is the output of a named commit, never pasted. The tree must be committed (the record names
the code it came from); a preflight that exits non-zero (a stage that does not fit, a bad config) keeps
nothing. JAX_PLATFORMS=cpu: the compiles use libtpu's device descriptions, not a TPU.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import keep_run  # noqa: E402  (the commit, code trees, lock and machine, as kept runs record them)


def keep(out: str, preflight_args: Sequence[str], *, allow_dirty: bool = False,
         run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> dict[str, Any]:
    """Runs the preflight with `preflight_args` from the repo root and writes its record to `out`."""
    prov = keep_run.provenance()  # before the run: the code that runs is the code it names
    if prov["dirty"] and not allow_dirty:
        raise RuntimeError(f"{', '.join(keep_run.CODE)} have uncommitted changes: commit first, so the record "
                           "names the code it came from")
    start = time.monotonic()
    proc = run([sys.executable, "-m", "drift_jax.preflight", *preflight_args], cwd=keep_run.ROOT,
               env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, check=False)
    seconds = round(time.monotonic() - start)
    if proc.returncode != 0:
        raise RuntimeError(f"the preflight exited {proc.returncode}; nothing kept:\n{proc.stderr[-3000:]}")
    record = {"command": " ".join(["python -m drift_jax.preflight", *preflight_args]), "stdout": proc.stdout,
              "seconds": seconds, "provenance": prov}
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="where the record goes (docs/results/preflight/<config>_<topology>.json)")
    p.add_argument("preflight_args", nargs=argparse.REMAINDER, help="-- then the preflight's own flags")
    args = p.parse_args(argv)
    flags = args.preflight_args[1:] if args.preflight_args[:1] == ["--"] else args.preflight_args
    try:
        record = keep(args.out, flags)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(record["stdout"], end="")
    print(f"kept in {args.out} ({record['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
