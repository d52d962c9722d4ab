"""What machine a run ran on, in the words its records and reports use ("AMD EPYC (2 CPU cores, Linux-...)")."""

from __future__ import annotations

import os
import pathlib
import platform


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", from /proc/cpuinfo on Linux), else what `platform` knows
    (often only the architecture, "x86_64")."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, str | int | None]:
    """This machine, as provenance.json, results and study.json record it."""
    return {"platform": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count()}
