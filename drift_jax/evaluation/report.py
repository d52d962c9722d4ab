"""Run report: multi@k and correction-rate metrics, results.json, report.md and report.png."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from drift_jax.runtime import files


def multi_at_k(solved_turn_N: Sequence[int], max_turns: int) -> dict[str, float]:
    """multi@k = share of problems solved within k turns; solved_turn 0 means never solved."""
    s = np.asarray(solved_turn_N)
    if s.size == 0:
        raise ValueError("no problems to score")
    return {f"multi@{k}": float(np.mean((s >= 1) & (s <= k))) for k in range(1, max_turns + 1)}


def correction_rates(solved_turn_N: Sequence[int], max_turns: int) -> dict[str, float | None]:
    """Per-turn correction rate: solved at turn t / problems still unsolved before turn t."""
    s = np.asarray(solved_turn_N)
    rates: dict[str, float | None] = {}
    for t in range(1, max_turns + 1):
        still_open = np.sum((s == 0) | (s >= t))
        rates[f"turn{t}"] = float(np.sum(s == t) / still_open) if still_open else None
    return rates


def write_results(path: str, methods: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> None:
    """`results.json` as {"methods": {NAME: {"multi@1": .., ..., "wall_seconds": ..}}, ...extra}."""
    files.write_text(path, json.dumps({"methods": dict(methods), **(extra or {})}, indent=2, sort_keys=True))


def budget(m: Mapping[str, Any]) -> str:
    """A method's training budget as the report states it: epochs or iterations, and optimizer steps."""
    steps = f", {m['optimizer_steps']} steps" if "optimizer_steps" in m else ""
    if "epochs" in m:
        return f"{m['epochs']} epochs{steps}"
    if "iterations" in m:
        return f"{m['iterations']} iterations{steps}"
    return "-"


def _table(methods: Mapping[str, Mapping[str, Any]], max_turns: int) -> list[str]:
    head = "| method | " + " | ".join(f"multi@{k}" for k in range(1, max_turns + 1)) + " | wall s | budget |"
    lines = [head, "|" + "---|" * (max_turns + 3)]
    for name, m in methods.items():
        cells = [f"{100 * m[f'multi@{k}']:.1f}" for k in range(1, max_turns + 1)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m.get('wall_seconds', float('nan')):.0f} | {budget(m)} |")
    return lines


def write_report(
    workdir: str,
    methods: Mapping[str, Mapping[str, Any]],
    max_turns: int,
    *,
    stage_seconds: Mapping[str, float] | None = None,
    weight_diagnostics: Mapping[str, Any] | None = None,
    weights_N: np.ndarray | None = None,
    notes: Sequence[str] = (),
    curves: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> None:
    """Writes report.md and report.png (multi@k curves per method, the weight histogram)."""
    lines = ["# DRIFT run report", "", "Held-out problems, greedy decoding, multi@k in %.", ""]
    lines += _table(methods, max_turns)
    lines += ["", "## Per-turn correction rate (solved at turn t / unsolved before t), %", ""]
    lines += ["| method | " + " | ".join(f"turn {t}" for t in range(1, max_turns + 1)) + " |"]
    lines += ["|" + "---|" * (max_turns + 1)]
    for name, m in methods.items():
        rates = m.get("correction_rates", {})
        cells = ["-" if rates.get(f"turn{t}") is None else f"{100 * rates[f'turn{t}']:.1f}" for t in range(1, max_turns + 1)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if stage_seconds:
        lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in stage_seconds.items()]
    if weight_diagnostics:
        lines += ["", "## Weight diagnostics", ""]
        for k, v in weight_diagnostics.items():
            if np.isscalar(v):
                lines.append(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    files.write_text(files.join(workdir, "report.md"), "\n".join(lines) + "\n")
    _plot(files.join(workdir, "report.png"), methods, max_turns, weights_N, curves)


def _plot(path, methods, max_turns, weights_N, curves) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + (weights_N is not None) + bool(curves)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    axes = np.atleast_1d(axes)
    ks = np.arange(1, max_turns + 1)
    for name, m in methods.items():
        axes[0].plot(ks, [100 * m[f"multi@{k}"] for k in ks], marker="o", label=name)
    axes[0].set(xlabel="turns k", ylabel="multi@k (%)", title="Solved within k turns", xticks=ks)
    axes[0].legend()
    i = 1
    if weights_N is not None:
        axes[i].hist(np.asarray(weights_N), bins=40, log=True)
        axes[i].set(xlabel="weight exp(R/beta)/Z", ylabel="trajectories", title="DRIFT weights")
        i += 1
    if curves:
        for name, pts in curves.items():
            xs, ys = zip(*pts)
            axes[i].plot(xs, [100 * y for y in ys], marker=".", label=name)
        axes[i].set(xlabel="wall seconds", ylabel=f"multi@{max_turns} (%)", title="Learning curves")
        axes[i].legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    files.write_bytes(path, png.getvalue())
