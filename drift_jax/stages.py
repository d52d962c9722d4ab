"""The pipeline's cached stages: each marker records the config it read and its inputs' digests, so a
changed config or input is never silently reused.

A stage is declared with the config values it reads (`reads`), the stages whose outputs it reads
(`after`) and its outputs (paths relative to the workdir; an absolute path, such as a local HF model, is
only digested). `Stages(workdir, plan, on_change)` compares the plan with the markers of earlier runs
before any stage runs. A stage is invalid when a value it reads changed, when one of its inputs changed
(an upstream stage is recomputed, or its outputs differ from the digest recorded when this stage ran),
when its own outputs changed on disk since it ran, or when an interrupted attempt was made under another
config (its partial outputs belong to that config). Everything downstream of an invalid stage is
invalid. `on_change="error"` stops with one error listing what changed and which stages it invalidates;
`"recompute"` moves those stages' markers and outputs to `<workdir>/replaced/<time>/` (nothing is
deleted) and runs them again. A stage without a marker resumes inside itself (rollout shards, trainer
checkpoints) only when its interrupted attempt read the same config.

A marker's `seconds` are the stage's wall time; a stage that resumed adds the seconds its earlier attempts
spent up to what they saved (`resumed_seconds`; runtime/clock.py), so a preempted run reports the cost of
the work in its outputs. SIGTERM during a stage raises `Preempted` (after the trainer saved a checkpoint): the stage is never
marked done, and a rerun resumes it. Digests: files up to 64 MiB by content (temporary and hidden files left out); larger files (model
weights) by size and their first and last MiB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from drift_jax.runtime import clock, files, hosts

ON_CHANGE = ("error", "recompute")
_WHOLE = 64 << 20  # files up to this size are hashed whole
_EDGE = 1 << 20


class StaleStageError(RuntimeError):
    """The config or inputs of cached stages differ from this run's."""


class Preempted(RuntimeError):
    """SIGTERM arrived during a stage: it stopped without a marker; what it saved is kept for the resume."""


@contextlib.contextmanager
def _stop_on_sigterm(name: str) -> Iterator[None]:
    """SIGTERM raises `Preempted` (the trainer's PreemptionGuard saves a checkpoint first and passes it on),
    so a stopped stage is never marked done. Signals can be handled only in the main thread."""
    def handler(signum, frame):
        raise Preempted(f"SIGTERM during stage {name}: stopped without marking it done. Finished stages and what "
                        "this one saved (rollout shards, trainer checkpoints) are kept; rerun the same command to "
                        "resume")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    reads: Mapping[str, Any]  # dotted config key -> value (JSON-able)
    after: tuple[str, ...] = ()  # stages whose outputs this one reads
    outputs: tuple[str, ...] = ()  # relative to the workdir (moved on recompute), or absolute (digested only)
    work: tuple[str, ...] = ()  # intermediate files (checkpoints): moved on recompute, not digested


def reads(cfg: Any, *keys: str, **computed: Any) -> dict[str, Any]:
    """The values of `keys` (dotted) in an ml_collections config, as plain JSON-able data."""
    out = {}
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        out[key] = _plain(node)
    return {**out, **{k: _plain(v) for k, v in computed.items()}}


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def digest(paths: Sequence[str], workdir: str) -> str:
    """sha256 over the files under `paths` (relative to workdir, or absolute): names and contents."""
    h = hashlib.sha256()
    for path in paths:
        root = path if os.path.isabs(path) or not files.is_local(path) else files.join(workdir, path)
        found = [f for f in files.walk_files(root)  # temporary and hidden files are not outputs
                 if ".tmp" not in os.path.basename(f) and not os.path.basename(f).startswith(".")]
        h.update(f"{path}:{len(found)}\0".encode())
        for f in found:
            size = files.path(f).stat().length
            h.update(f"{os.path.relpath(f, root) if f != root else '.'}:{size}\0".encode())
            with files.path(f).open("rb") as fh:
                if size <= _WHOLE:
                    h.update(fh.read())
                else:
                    h.update(fh.read(_EDGE))
                    fh.seek(size - _EDGE)
                    h.update(fh.read(_EDGE))
    return h.hexdigest()[:20]


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """One line per changed leaf: `key: old -> new`."""
    lines = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            lines.append(f"{prefix}{k}: {json.dumps(a)} -> {json.dumps(b)}")
    return lines


class Stages:
    """Markers of finished stages, checked against the plan of this run before any stage runs."""

    def __init__(self, workdir: str, plan: Sequence[Stage], on_change: str = "error", *, is_writer: bool = True):
        if on_change not in ON_CHANGE:
            raise ValueError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
        self.workdir, self.is_writer = workdir, is_writer
        self.dir = files.join(workdir, "stages")
        self.plan = {s.name: s for s in plan}
        self.invalid = self._invalid()
        if self.invalid and on_change == "error":
            raise StaleStageError(self._explain())
        if self.invalid:
            self._replace()

    # --------------------------------------------------------------------- markers

    def _path(self, name: str, kind: str = "") -> str:
        return files.join(self.dir, f"{name}{kind}.json")

    def _load(self, name: str, kind: str = "") -> dict[str, Any] | None:
        path = self._path(name, kind)
        if not files.exists(path):
            return None
        return json.loads(files.read_text(path))

    def _write(self, name: str, kind: str, content: dict[str, Any]) -> None:
        if self.is_writer:
            files.write_text(self._path(name, kind), json.dumps(content, indent=2, default=float))

    def get(self, name: str) -> dict[str, Any] | None:
        marker = self._load(name)
        return None if marker is None else marker["summary"]

    def _inputs(self, stage: Stage) -> dict[str, str | None]:
        return {u: (self._load(u) or {}).get("output_digest") for u in stage.after}

    # --------------------------------------------------------------------- the check before any stage runs

    def _invalid(self) -> dict[str, list[str]]:
        invalid: dict[str, list[str]] = {}
        for name, stage in self.plan.items():
            marker, started = self._load(name), self._load(name, ".started")
            record = marker or started
            if record is None:
                continue
            what = "" if marker else "an interrupted attempt: "
            if "reads" not in record:
                invalid[name] = [f"{what}its marker predates config keys (unknown config)"]
                continue
            reasons = [what + line for line in _diff(record["reads"], dict(stage.reads))]
            for u in stage.after:
                if u in invalid:
                    reasons.append(f"its input {u} is recomputed")
                elif record["inputs"].get(u) != self._inputs(stage)[u]:
                    reasons.append(f"{what}its input {u} changed since it ran")
            if marker and not reasons and digest(stage.outputs, self.workdir) != marker["output_digest"]:
                reasons.append(f"its outputs changed on disk since it ran ({', '.join(stage.outputs)})")
            if reasons:
                invalid[name] = reasons
        return invalid

    def _explain(self) -> str:
        lines = [(f"this run's config or inputs differ from the earlier run in {self.workdir}; "
                  f"invalidated: {', '.join(self.invalid)}")]
        for name, reasons in self.invalid.items():
            lines += [f"  {name}: {r}" for r in reasons]
        lines.append("Rerun with --on_change=recompute (pipeline.run(..., on_change='recompute')) to recompute these "
                     "stages and everything downstream (their old outputs are moved to "
                     f"{files.join(self.workdir, 'replaced')}/, nothing is deleted), or use another --workdir.")
        return "\n".join(lines)

    def _replace(self) -> None:
        """Moves the invalid stages' markers and outputs aside."""
        dest = files.join(self.workdir, "replaced", time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
        if self.is_writer:
            for name in self.invalid:
                rel = [files.join("stages", f"{name}{k}.json") for k in ("", ".started")]
                stage = self.plan[name]
                for path in rel + [p for p in stage.outputs + stage.work if not os.path.isabs(p)]:
                    src = files.join(self.workdir, path)
                    if files.exists(src):
                        files.move(src, files.join(dest, path))
            print(f"[stages] recomputing {', '.join(self.invalid)}; old outputs moved to {dest}", flush=True)
        hosts.barrier("stages_replaced")

    # --------------------------------------------------------------------- running

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        stage = self.plan[name]
        key = {"reads": dict(stage.reads), "inputs": self._inputs(stage)}
        done = self._load(name)
        if done is not None:
            print(f"[{name}] cached ({done['summary']['seconds']:.1f}s when it ran)", flush=True)
            return done["summary"]
        self._write(name, ".started", key)
        with _stop_on_sigterm(name), clock.measuring() as work:
            summary = fn() or {}
        summary["seconds"] = work.elapsed()  # with the earlier attempts' seconds, if it resumed (runtime/clock.py)
        if work.earlier:
            summary["resumed_seconds"] = work.earlier
        hosts.barrier(f"stage_{name}")  # every process's outputs are written before they are digested
        self._write(name, "", {**key, "output_digest": digest(stage.outputs, self.workdir), "summary": summary})
        if self.is_writer and files.exists(self._path(name, ".started")):
            files.remove(self._path(name, ".started"))
        brief = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in summary.items() if np.isscalar(v))
        print(f"[{name}] done in {summary['seconds']:.1f}s: {brief}", flush=True)
        return summary
