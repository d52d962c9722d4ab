"""Compiles a run's programs for a set of devices and reads off, per stage, what a launch needs to know:
memory per chip against HBM, collectives, FLOPs and HBM bytes per step, and a roofline time.

A step is one call of the stage's program, except decode, where it is one trip of the decode chunk's
loop (one token for every row): its collectives, FLOPs and bytes are those of the loop's body. Loops
inside a step (layers, micro-batches, the compiler's windowed matmuls) count once per trip (`hlo`). Roofline: max(FLOPs / peak, HBM bytes / HBM bandwidth, collective traffic / ICI
bandwidth) with the chip's published figures (`chips`): a lower bound on the step's time.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from drift_jax.preflight import hlo, hlo_costs
from drift_jax.preflight.chips import Chip
from drift_jax.preflight.programs import Program

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class DoesNotFit(RuntimeError):
    """A stage needs more memory per chip than the chip has."""


@dataclasses.dataclass
class StageReport:
    stage: str
    fits: bool
    memory_bytes_per_chip: int  # arguments + outputs not aliased to them + temporaries + code + resident
    hbm_bytes_per_chip: int | None
    argument_bytes_per_chip: int
    temp_bytes_per_chip: int
    resident_bytes_per_chip: int  # what the stage holds besides its program's buffers (online RL's reference)
    flops_per_step: float | None  # per chip
    hbm_bytes_per_step: float | None  # per chip
    collectives_per_step: dict[str, dict[str, float]]  # opcode -> {"count", "bytes"} per chip
    collective_bytes_per_step: float
    weight_all_gather_bytes_per_step: float  # all-gathers: under FSDP every one is a weight's
    roofline_seconds_per_step: float | None
    bound: str  # which term of the roofline: compute, memory or ici
    tokens_per_step: int
    estimated_tokens_per_s_per_chip: float | None = None  # rollout and eval stages
    estimated_mfu: float | None = None  # train stages: model FLOPs / (peak x roofline time)
    compile_seconds: float = 0.0
    knobs: tuple[str, ...] = ()
    error: str = ""

    def json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["knobs"] = list(self.knobs)
        return {k: v for k, v in d.items() if v is not None or k in ("hbm_bytes_per_chip",)}


def hbm_limit(devices: list[Any]) -> int | None:
    """Bytes a program may use per chip: the runtime's limit on real devices; on device descriptions,
    the figure the compiler reports when a program is too big (below the published capacity)."""
    try:
        stats = devices[0].memory_stats()
        if stats and stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001  (device descriptions and CPUs have no stats)
        pass
    if devices[0].platform != "tpu":
        return None
    mesh = Mesh(np.array(devices), ("d",))
    n = len(devices) * 2**18
    x = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("d")))
    try:  # a [2^18, 2^17] float32 temporary per chip: 128 GiB, more than any chip has
        jax.jit(lambda v: (jnp.sin(jnp.outer(v, v[:2**17])) @ v[:2**17]).sum()).lower(x).compile()
    except Exception as e:  # noqa: BLE001
        found = _oom_figures(str(e))
        if found:
            return found[1]
    return None


def _oom_figures(message: str) -> tuple[int, int] | None:
    """(bytes required, bytes available) from XLA's out-of-memory message."""
    m = re.search(r"temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", message)
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2)]), int(float(m.group(3)) * _UNITS[m.group(4)])


def _shard_bytes(tree: Any) -> int:
    total = 0
    for x in jax.tree.leaves(tree):
        if not hasattr(x, "shape"):  # static arguments (a model config)
            continue
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        itemsize = 8 if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else jnp.dtype(x.dtype).itemsize
        total += math.prod(shape) * itemsize
    return total


def _costs(compiled, loop_body: bool) -> tuple[float, float, hlo.Program]:
    """(FLOPs, HBM bytes) of one call, or (`loop_body`) of one trip of its longest loop, loops inside
    counted per trip (`hlo`). FLOPs are scaled to XLA's cost_analysis() (the HLO's count with every loop
    body once is within 0.01% of it). Bytes are the HLO's own count of what the program moves: XLA's
    model counts a whole stacked [layers, ...] operand where a scanned layer's fusion slices one layer
    out of it in an inner fusion (a train step's bytes grew with the square of the layers), but not in
    every program (decode's unrolled layers it counts by the slice), so no one scale fits both."""
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    program = hlo.Program(compiled.as_text())
    once = program.costs(loop_trips=False)
    root = max(program.loops(), key=lambda loop: loop[1])[0] if loop_body else None
    step = program.costs(root)
    flops = ca.get("flops", 0.0) if ca else 0.0  # a deviceless GPU compile has no cost analysis
    scale = flops / once["flops"] if flops and once["flops"] else 1.0
    return float(step["flops"] * scale), float(step["bytes accessed"]), program


def _traffic(c: hlo_costs.Collective) -> float:
    """Bytes a chip sends for one collective over a ring of its group: all-reduce twice the buffer; a
    collective-permute (the compiler's windowed matmuls gather a weight shard by shard) its buffer."""
    if c.opcode == "collective-permute":
        return float(c.bytes)
    if c.group_size <= 1:
        return 0.0
    share = (c.group_size - 1) / c.group_size
    return c.bytes * share * (2.0 if c.opcode == "all-reduce" else 1.0)


@dataclasses.dataclass
class _Compiled:
    memory: int = 0
    arguments: int = 0
    temps: int = 0
    available: int | None = None  # from an out-of-memory message
    flops: float = 0.0
    hbm: float = 0.0
    collectives: list = dataclasses.field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


def _compile(p: Program, mesh: Mesh, loop_body: bool = False) -> _Compiled:
    out = _Compiled(arguments=_shard_bytes((p.args, p.kwargs)))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = p.fn.lower(*p.args, **p.kwargs)
        try:
            compiled = lowered.compile()
        except Exception as e:
            found = _oom_figures(str(e))
            if found is None:
                raise
            out.temps, out.available = found
            out.memory = out.arguments + out.temps
            out.error = str(e).splitlines()[0]
            out.seconds = time.perf_counter() - start
            return out
    out.seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    out.temps = m.temp_size_in_bytes
    out.memory = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
                  + m.generated_code_size_in_bytes)
    out.flops, out.hbm, program = _costs(compiled, loop_body)
    root = max(program.loops(), key=lambda loop: loop[1])[0] if loop_body else None
    out.collectives = program.collectives(root)
    return out


def analyze(p: Program, mesh: Mesh, chip: Chip | None, hbm: int | None) -> StageReport:
    """Compiles one stage's programs; the report says whether it fits and how fast it can be."""
    main = _compile(p, mesh, loop_body=p.per_loop_trip)
    resident = _shard_bytes(p.resident)
    main.memory += resident
    memory, temps, collectives, seconds = main.memory, main.temps, main.collectives, main.seconds
    flops, hbm_bytes, error = main.flops, main.hbm, main.error
    hbm = main.available or hbm
    summary: dict[str, dict[str, float]] = {}
    for c in collectives:
        s = summary.setdefault(c.opcode, {"count": 0.0, "bytes": 0.0})
        s["count"] += c.times
        s["bytes"] += c.times * c.bytes
    report = StageReport(
        stage=p.stage, fits=hbm is None or memory <= hbm, memory_bytes_per_chip=int(memory), hbm_bytes_per_chip=hbm,
        argument_bytes_per_chip=main.arguments, temp_bytes_per_chip=int(temps), resident_bytes_per_chip=resident,
        flops_per_step=None if error else flops, hbm_bytes_per_step=None if error else hbm_bytes,
        collectives_per_step=summary, collective_bytes_per_step=sum(s["bytes"] for s in summary.values()),
        weight_all_gather_bytes_per_step=summary.get("all-gather", {}).get("bytes", 0.0),
        roofline_seconds_per_step=None, bound="", tokens_per_step=p.tokens_per_step,
        compile_seconds=seconds, knobs=p.knobs, error=error,
    )
    if chip is not None and not error:
        terms = {"compute": flops / chip.peak_flops, "memory": hbm_bytes / chip.hbm_bandwidth,
                 "ici": sum(_traffic(c) * c.times for c in collectives) / chip.ici_bandwidth}
        report.bound = max(terms, key=terms.get)
        report.roofline_seconds_per_step = terms[report.bound]
        t, n = report.roofline_seconds_per_step, mesh.size
        if p.model_flops_per_step:
            report.estimated_mfu = p.model_flops_per_step / (n * chip.peak_flops * t) if t else None
        elif t:
            report.estimated_tokens_per_s_per_chip = p.tokens_per_step / n / t
    return report


def fit_error(report: StageReport, topology: str, headroom: float = 0.0) -> str:
    """The message of a stage that does not fit (with `headroom` spare): what it needs, what there is,
    and the knobs that shrink it."""
    need, have = report.memory_bytes_per_chip, report.hbm_bytes_per_chip
    return (f"stage {report.stage} does not fit on {topology}: it needs {need / 2**30:.2f} GiB per chip "
            f"({report.temp_bytes_per_chip / 2**30:.2f} GiB of temporaries, {report.argument_bytes_per_chip / 2**30:.2f}"
            f" GiB of arguments) of {have / 2**30:.2f} GiB HBM"
            + (f" less {headroom:.0%} headroom" if headroom else "")
            + (f"; {report.resident_bytes_per_chip / 2**30:.2f} GiB of it are held beside the program"
               if report.resident_bytes_per_chip else "")
            + f". Reduce it with: {', '.join(report.knobs)}")


def check(reports: list[StageReport], topology: str, headroom: float = 0.0) -> None:
    """Raises DoesNotFit naming every stage over `1 - headroom` of HBM."""
    over = [r for r in reports if r.hbm_bytes_per_chip and r.memory_bytes_per_chip > (1 - headroom) * r.hbm_bytes_per_chip]
    if over:
        raise DoesNotFit("\n".join(fit_error(r, topology, headroom) for r in over))
