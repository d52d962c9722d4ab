"""Compiles the rollout engine's decode chunk for Qwen2.5-3B on a TPU v5e:4x8 (on this CPU, via libtpu) and
counts the all-gathers of the program and of its decode loop, in the rollout layout or (`train`) the
training layout. Run: `python tools/decode_collectives_tpu.py [steps] [train]`; prints one JSON line.
(drift_jax/preflight reports the same per stage for whole configs.)"""
import os, re, sys, json, time
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh
from drift_jax.lm import decode_state, model, presets, sampling, sharding
from drift_jax.rollout import engine
t0 = time.time()
devs = topologies.get_topology_desc(platform="tpu", topology_name="v5e:4x8", chip_config_name="default",
                                    chips_per_host_bounds=(2, 2, 1), num_slices=1).devices
mesh = Mesh(np.array(devs).reshape(1, len(devs), 1), ("data", "fsdp", "tensor"))
cfg = presets.config("qwen2_5_3b").replace(param_dtype="float32", dtype="bfloat16")
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
rows, length = 512, engine.cache_length(engine.EngineConfig(prompt_buckets=(128, 256, 512, 1024)), 5, 512, 16)
shapes = jax.eval_shape(lambda: jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.init_params(cfg, jax.random.key(0))))
layout = sharding.RULES if "train" in sys.argv[2:] else decode_state.RULES
with sharding.use_rules(layout):
    psh = sharding.tree_shardings(mesh, model.param_logical_axes(cfg), shapes)
params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, psh)
st_shape = jax.eval_shape(lambda: decode_state._empty_state(cfg, rows, length))
st = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), st_shape,
                  decode_state._state_shardings(mesh, cfg, rows, length))
row = lambda *shape, dtype=jnp.int32: jax.ShapeDtypeStruct((rows, *shape), dtype, sharding=decode_state._rows(mesh, (rows, *shape)))
rws = sampling.Rows(row(2, dtype=jnp.uint32), row(), row(), row(), row(), row(dtype=jnp.bool_), row(5))
plan = sampling.Plan(sampling.Sampling(temperature=1.0, stop_tokens=(151645,)), tuple(range(16)), steps)
with decode_state._in_layout(mesh):
    fn = sampling._decode_fn(cfg, mesh, rows, length, 5, plan)
    hlo = fn.lower(params, state=st, rows=rws).compile().as_text()
import test_engine as te
loop = te._loop_collectives(hlo)
allg = re.findall(r"= (\S+) all-gather(?:-start)?\(", hlo)
pshapes = {tuple(x.shape) for x in jax.tree.leaves(shapes)}
pshapes |= {s[1:] for s in pshapes if len(s) > 1}
dims = lambda s: tuple(int(d) for d in re.findall(r"\d+", s.split("{")[0].split("[", 1)[1])) if "[" in s else ()
print(json.dumps({"layout": "train" if layout is sharding.RULES else "rollout", "mesh": dict(mesh.shape), "rows": rows, "cache_length": length, "chunk_steps": steps,
                  "all_gathers_in_program": len(allg), "all_gathers_in_decode_loop": len(loop),
                  "loop_all_gather_shapes": sorted(set(loop))[:10],
                  "weight_all_gathers": [s for s in allg if dims(s) in pshapes],
                  "loop_all_gather_bytes": int(sum(np.prod(dims(x)) * (2 if x.startswith("bf16") else 4) for x in loop)),
                  "seconds": round(time.time() - t0, 1)}))
