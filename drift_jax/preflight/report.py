"""A run's preflight: every stage compiled for its devices, as a table or JSON; and the precompile of `main`.

    report = preflight.report.run(cfg, topology="v5e:4x8")    # device descriptions: no TPU needed
    print(report.table()); analysis.check(report.stages, report.topology)
`precompile(cfg, mesh)` does the same on the run's real devices and raises `DoesNotFit` before any
stage starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from drift_jax import validate
from drift_jax.lm import sharding
from drift_jax.preflight import analysis, chips, programs
from drift_jax.preflight.analysis import StageReport
from drift_jax.preflight.programs import Shapes
from drift_jax.runtime import files

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Preflight:
    topology: str
    chip: str | None
    mesh: dict[str, int]
    model: dict[str, Any]
    shapes: Shapes
    stages: list[StageReport]

    def json(self) -> dict[str, Any]:
        return {"topology": self.topology, "chip": self.chip, "mesh": self.mesh, "model": self.model,
                "shapes": dataclasses.asdict(self.shapes), "stages": [s.json() for s in self.stages]}

    def table(self) -> str:
        """One row per stage: memory against HBM, per-step FLOPs, bytes, collectives and roofline."""
        head = (f"{self.topology} ({self.chip or 'unknown chip'}), mesh {self.mesh}, model {self.model['name']} "
                f"({self.model['params'] / 1e9:.2f}B params); longest prompt {self.shapes.prompt_tokens} tokens, "
                f"feedback {self.shapes.feedback_tokens}. A decode step is one decoded token; per chip.")
        cols = ("stage", "fits", "memory GiB", "HBM GiB", "TFLOP/step", "HBM GB/step", "collectives/step",
                "weight AG GB/step", "roofline ms", "bound", "tokens/s/chip", "MFU")
        rows = [cols]
        for s in self.stages:
            coll = ", ".join(f"{round(v['count'])} {k} {v['bytes'] / 1e9:.2f} GB"
                             for k, v in sorted(s.collectives_per_step.items()) if v["count"])
            rows.append((
                s.stage, "yes" if s.fits else "NO", f"{s.memory_bytes_per_chip / 2**30:.2f}",
                _fmt(s.hbm_bytes_per_chip, 2**30), _fmt(s.flops_per_step, 1e12, 3), _fmt(s.hbm_bytes_per_step, 1e9),
                coll or "-", f"{s.weight_all_gather_bytes_per_step / 1e9:.2f}", _fmt(s.roofline_seconds_per_step, 1e-3),
                s.bound or "-", _fmt(s.estimated_tokens_per_s_per_chip, 1, 0), _fmt(s.estimated_mfu, 0.01, 1, "%"),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return head + "\n" + "\n".join(lines)


def _fmt(x: float | None, unit: float, digits: int = 2, suffix: str = "") -> str:
    return "-" if x is None else f"{x / unit:.{digits}f}{suffix}"


def data_shapes(cfg: ml_collections.ConfigDict, default: Shapes = Shapes()) -> Shapes:
    """The longest prompt and the feedback message measured on the run's tokenizer and problems where
    they are on this machine; `default`'s figures for what is not."""
    from drift_jax import envs, stage_io

    path = cfg.model.hf_path or cfg.model.tokenizer_path or (
        "" if cfg.model.get("preset", "") else envs.SYNTHETIC_TOKENIZER)
    if not path:
        return default
    try:
        chat = envs.ChatFormat.from_pretrained(path)
    except Exception as e:  # noqa: BLE001  (a missing or partial checkpoint directory)
        log.warning("preflight: no tokenizer at %s (%s); assuming %s", path, e, default)
        return default
    feedback = len(chat.feedback_ids(cfg.feedback))
    shapes = dataclasses.replace(default, feedback_tokens=feedback, stop_tokens=tuple(chat.stop_token_ids),
                                 pad_id=chat.pad_id)
    try:
        problems = stage_io.problems(cfg, "train", cfg.rollout.num_problems) + stage_io.eval_problems(cfg)
    except Exception as e:  # noqa: BLE001  (task data not on this machine)
        log.warning("preflight: task data not found (%s); assuming prompts of %d tokens", e, default.prompt_tokens)
        return shapes
    env = envs.Env(cfg.max_turns, cfg.feedback)
    longest = max(len(chat.prompt_ids(m)) for m in env.reset(problems))
    return dataclasses.replace(shapes, prompt_tokens=longest)


# Problems `validate` finds with files that a run's machine has and this one need not (weights, tokenizer,
# task files): the preflight sizes a model from its config.json or a preset and needs none of them.
_FILE_PROBLEM = re.compile(r"^(model\.hf_path|model\.tokenizer_path|task|eval\.task|reference\.task): ")


def config_problems(cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[list[str], list[str]]:
    """(problems with the config itself, problems with files absent here) as `validate` lists them for a
    run on `num_devices` devices; main stops on either, the preflight on the first only. A preset stands
    for the checkpoint directory the run will name in model.hf_path."""
    preset, placeholder = cfg.model.get("preset", ""), ""
    if preset and not cfg.model.hf_path:
        cfg = ml_collections.ConfigDict(cfg.to_dict())
        cfg.model.hf_path = placeholder = f"<the {preset} checkpoint>"
    found = validate.problems(cfg, devices=num_devices)
    if placeholder:
        found = [p for p in found if not (p.startswith("model.hf_path") and placeholder in p)]
    files = [p for p in found if _FILE_PROBLEM.match(p)]
    return [p for p in found if p not in files], files


def run(cfg: ml_collections.ConfigDict, *, topology: str | None = None, devices: list[Any] | None = None,
        shapes: Shapes | None = None) -> Preflight:
    """Compiles every stage of `cfg` for `topology` (device descriptions) or `devices` (default: this
    machine's) on the config's mesh."""
    if topology:
        chip, devices = chips.topology_devices(topology)
    else:
        devices = list(devices or jax.devices())
        chip = chips.chip_of_devices(devices)
        topology = f"{len(devices)} x {devices[0].device_kind}"
    mesh = sharding.make_mesh(cfg.mesh.to_dict(), devices=devices)
    return _run(cfg, mesh, topology, chip, shapes or data_shapes(cfg), described=True)


def _run(cfg, mesh: Mesh, topology: str, chip: chips.Chip | None, shapes: Shapes, described: bool = False) -> Preflight:
    hbm = analysis.hbm_limit(list(mesh.devices.flat))
    if hbm is None and described and chip is not None:  # GPU descriptions: the published capacity
        hbm = chip.hbm_bytes
    progs = programs.programs(cfg, mesh, shapes)
    reports = []
    for p in progs:
        log.info("preflight: compiling %s", p.stage)
        reports.append(analysis.analyze(p, mesh, chip, hbm))
    policy = progs[-1].model_config
    name = cfg.model.get("preset", "") or cfg.model.hf_path or "scratch"
    model = {"name": name, "params": policy.num_params, "param_dtype": policy.param_dtype, "dtype": policy.dtype,
             "remat": policy.remat}
    return Preflight(topology, chip.name if chip else None, dict(mesh.shape), model, shapes, reports)


def precompile(cfg: ml_collections.ConfigDict, mesh: Mesh, out_path: str | None = None) -> Preflight:
    """`main`'s check before the first stage: every stage compiled on the real devices of `mesh` (the
    report written to `out_path` by process 0); raises DoesNotFit, or the compiler's error, in the
    first minutes rather than after the rollouts."""
    devices = list(mesh.devices.flat)
    chip = chips.chip_of_devices(devices)
    result = _run(cfg, mesh, f"{len(devices)} x {devices[0].device_kind}", chip, data_shapes(cfg))
    if out_path and jax.process_index() == 0:
        files.write_text(out_path, json.dumps(result.json(), indent=1))
    log.info("precompiled every stage:\n%s", result.table())
    analysis.check(result.stages, result.topology)
    return result
