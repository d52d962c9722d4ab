"""Checks the preflight's per-step figures against an independent compile of the same step with no loops.

    JAX_PLATFORMS=cpu python benchmarks/preflight_agreement.py --preset=qwen2_5_1_5b --topology=v5p:2x2x1

The preflight reads a step's FLOPs and bytes from the compiled program, counting each loop body (layers,
micro-batches, the compiler's windowed matmuls) once per trip. Here the same train step and the same
decode step are compiled again with every scan unrolled (jax.lax.scan forced to unroll=True), so XLA's
own cost_analysis() counts everything; the two must agree within 10%. Memory is compared too (an
unrolled program schedules differently, so it is a looser check). Prints one line per figure.
"""

import functools
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "qwen2_5_1_5b", "model preset")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p:2x2x1", "TPU slice")
_BATCH = flags.DEFINE_integer("batch", 16, "train rows per step")
_MICRO = flags.DEFINE_integer("micro_batches", 2, "micro-batches per step")
_SEQ = flags.DEFINE_integer("seq_len", 1024, "train tokens per row")
_ROWS = flags.DEFINE_integer("rows", 64, "rollout rows")


def main(argv):
    del argv
    import jax
    import ml_collections

    from configs import paper_qwen2_5_3b
    from drift_jax.preflight import analysis, chips, programs
    from drift_jax.lm import sampling, sharding

    cfg = paper_qwen2_5_3b.get_config()
    cfg.model.preset = _PRESET.value
    cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    cfg.train.update(batch_size=_BATCH.value, micro_batches=_MICRO.value, seq_len=_SEQ.value)
    cfg.rollout.rows_per_batch = _ROWS.value
    cfg.max_new_tokens, cfg.max_turns = 256, 3
    chip, devices = chips.topology_devices(_TOPOLOGY.value)
    mesh = sharding.make_mesh(cfg.mesh.to_dict(), devices=devices)
    hbm = analysis.hbm_limit(devices)
    shapes = programs.Shapes(prompt_tokens=256, feedback_tokens=16)
    wanted = {"train", "rollout_decode"}  # two programs of another model, slice and batch
    reports = {p.stage: analysis.analyze(p, mesh, chip, hbm) for p in programs.programs(cfg, mesh, shapes)
               if p.stage in wanted}

    scan, lax_map = jax.lax.scan, jax.lax.map
    jax.lax.scan = functools.partial(_unrolled, scan)  # every scan below, flax's layer scan included
    jax.lax.map = lambda f, xs, **kw: scan(lambda c, x: (c, f(x)), None, xs, unroll=True)[1]  # the loss chunks
    jax.clear_caches()  # traces made with the scans above must not be reused
    for fn in (sampling._decode_fn, sampling._refill_fn):
        fn.cache_clear()
    try:
        for p in programs.programs(cfg, mesh, shapes):
            if p.stage not in wanted:
                continue
            with jax.set_mesh(mesh):
                compiled = p.fn.lower(*p.args, **p.kwargs).compile()
            ca = compiled.cost_analysis()
            m = compiled.memory_analysis()
            memory = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                      + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
            r = reports[p.stage]
            if p.per_loop_trip:  # one decode step: the unrolled loop still runs its chunk's trips
                from drift_jax.preflight import hlo

                program = hlo.Program(compiled.as_text())
                body, _ = max(program.loops(), key=lambda loop: loop[1])
                once = program.costs(loop_trips=False)
                step = program.costs(body, loop_trips=False)
                ca = {k: ca[k] * step[k] / once[k] for k in ("flops", "bytes accessed")}
            for name, ours, theirs in (("flops/step", r.flops_per_step, ca["flops"]),
                                       ("HBM bytes/step", r.hbm_bytes_per_step, ca["bytes accessed"]),
                                       ("memory/chip", r.memory_bytes_per_chip, memory)):
                print(f"{p.stage:15s} {name:15s} preflight {ours:.4g}  unrolled compile {theirs:.4g}  "
                      f"ratio {ours / theirs:.3f}")
    finally:
        jax.lax.scan, jax.lax.map = scan, lax_map


def _unrolled(scan, f, init, xs=None, length=None, reverse=False, unroll=1, **kw):
    return scan(f, init, xs, length=length, reverse=reverse, unroll=True, **kw)


if __name__ == "__main__":
    app.run(main)
