"""Preflight: every stage compiled for a TPU slice on CPU (libtpu's device descriptions), memory and costs read off."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import quickstart
from drift_jax.lm import sharding
from drift_jax.preflight import analysis, chips, hlo, programs, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE_KEYS = {"stage", "fits", "memory_bytes_per_chip", "hbm_bytes_per_chip", "collective_bytes_per_step",
              "weight_all_gather_bytes_per_step", "roofline_seconds_per_step", "flops_per_step", "hbm_bytes_per_step"}


@pytest.fixture(scope="module")
def v5e_2x2():
    try:
        return chips.topology_devices("v5e:2x2")
    except Exception as e:  # noqa: BLE001
        reason = f"libtpu cannot describe a v5e:2x2 here ({e}); pip install -r requirements-test.txt"
        print(f"\nSKIPPED test_preflight: {reason}", file=sys.stderr)
        pytest.skip(reason)


def tiny_config(**train):
    c = quickstart.get_config()
    c.max_new_tokens, c.max_turns = 8, 3
    c.reference.train.update(batch_size=8, seq_len=64)
    c.train.update(batch_size=16, seq_len=96, **train)
    c.online_rl.train.update(batch_size=16, seq_len=96)
    c.online_rl.update(problems_per_iteration=4, samples_per_problem=4)
    c.rollout.rows_per_batch = c.eval.rows_per_batch = 16
    return c


def test_scan_costs_count_every_trip_as_an_unrolled_compile_does(v5e_2x2):
    # The independent check of the loop accounting: XLA counts a scan's body once; the same program
    # unrolled is counted whole. The HLO's trips x body must give the unrolled figures.
    _, devices = v5e_2x2
    mesh = Mesh(np.array(devices), ("d",))
    w = jax.ShapeDtypeStruct((12, 512, 512), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec(None, "d")))
    x = jax.ShapeDtypeStruct((256, 512), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("d")))

    def loss(w, x, unroll):
        return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w, unroll=unroll)[0].sum()

    scanned = jax.jit(jax.grad(lambda w, x: loss(w, x, 1))).lower(w, x).compile()
    unrolled = jax.jit(jax.grad(lambda w, x: loss(w, x, True))).lower(w, x).compile()
    program = hlo.Program(scanned.as_text())
    assert program.costs(loop_trips=False)["flops"] == pytest.approx(scanned.cost_analysis()["flops"], rel=0.02)
    flops, _, _ = analysis._costs(scanned, loop_body=False)
    assert flops == pytest.approx(unrolled.cost_analysis()["flops"], rel=0.05)
    assert flops > 10 * scanned.cost_analysis()["flops"]  # 12 layers, forward and backward
    # FSDP: every layer's weight is all-gathered inside the loop, once per trip.
    gathers = [c for c in program.collectives() if c.opcode == "all-gather"]
    assert sum(c.times for c in gathers) >= 12


_IN_PLACE_AND_VMEM = """HloModule m

%comb (a: bf16[], b: bf16[]) -> bf16[] {
  %a = bf16[] parameter(0)
  ROOT %b = bf16[] parameter(1)
}

%fused_scatter (p0: bf16[4,16,128], p1: s32[2,1], p2: bf16[2,1,128]) -> bf16[4,16,128] {
  %p0 = bf16[4,16,128]{2,1,0} parameter(0)
  %p1 = s32[2,1]{1,0} parameter(1)
  %p2 = bf16[2,1,128]{2,1,0} parameter(2)
  ROOT %scatter = bf16[4,16,128]{2,1,0} scatter(%p0, %p1, %p2), update_window_dims={1,2}, inserted_window_dims={0}, scatter_dims_to_operand_dims={0}, index_vector_dim=1, to_apply=%comb
}

%fused_add (q0: bf16[1024,1024]) -> bf16[1024,1024] {
  %q0 = bf16[1024,1024]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  ROOT %add = bf16[1024,1024]{1,0} add(%q0, %q0)
}

ENTRY %main (cache: bf16[4,16,128], idx: s32[2,1], upd: bf16[2,1,128], w: bf16[1024,1024]) -> (bf16[4,16,128], bf16[1024,1024]) {
  %cache = bf16[4,16,128]{2,1,0} parameter(0)
  %idx = s32[2,1]{1,0} parameter(1)
  %upd = bf16[2,1,128]{2,1,0} parameter(2)
  %w = bf16[1024,1024]{1,0:T(8,128)(2,1)} parameter(3)
  %scatter_fusion = bf16[4,16,128]{2,1,0} fusion(%cache, %idx, %upd), kind=kCustom, calls=%fused_scatter
  %copy-start = (bf16[1024,1024]{1,0:T(8,128)(2,1)S(1)}, bf16[1024,1024]{1,0:T(8,128)(2,1)}, u32[]{:S(2)}) copy-start(%w)
  %copy-done = bf16[1024,1024]{1,0:T(8,128)(2,1)S(1)} copy-done(%copy-start)
  %add_fusion = bf16[1024,1024]{1,0:T(8,128)(2,1)} fusion(%copy-done), kind=kLoop, calls=%fused_add
  ROOT %t = (bf16[4,16,128]{2,1,0}, bf16[1024,1024]{1,0:T(8,128)(2,1)}) tuple(%scatter_fusion, %add_fusion)
}
"""


def test_bytes_count_in_place_scatters_by_their_update_and_no_vmem_traffic():
    # A scatter into a buffer it may overwrite (a decode step writing one token's K into the stacked
    # cache) writes its update, not the buffer; a weight prefetched into VMEM (S(1)) is read from HBM once,
    # by its copy-start, and the fusion that uses it reads VMEM. XLA's model counts both in full.
    program = hlo.Program(_IN_PLACE_AND_VMEM)
    w, cache, update, index = 1024 * 1024 * 2, 4 * 16 * 128 * 2, 2 * 128 * 2, 2 * 4
    assert program.costs()["bytes accessed"] == (index + 2 * update) + w + w  # scatter; prefetch; add's output
    assert program.costs(xla_model=True)["bytes accessed"] == (2 * cache + index + update) + 2 * w + 2 * w


EVERY_STAGE = {"reference_train", "rollout_prefill", "rollout_decode", "train", "online_rl_rollout_prefill",
               "online_rl_rollout_decode", "online_rl_logprobs", "online_rl_train", "eval_prefill", "eval_decode"}


@pytest.mark.parametrize("methods", [pytest.param(("reference", "drift"), id="drift"),
                                     pytest.param(None, id="every_method", marks=pytest.mark.slow)])
def test_tiny_run_compiles_every_stage_for_a_v5e_2x2(v5e_2x2, methods):
    cfg = tiny_config()
    if methods:
        cfg.methods = methods
    result = report.run(cfg, topology="v5e:2x2", shapes=programs.Shapes(prompt_tokens=40, feedback_tokens=9))
    out = result.json()
    assert out["topology"] == "v5e:2x2" and out["chip"] == "v5e" and out["mesh"]["data"] == 4
    stages = {s["stage"]: s for s in out["stages"]}
    assert set(stages) == (EVERY_STAGE if methods is None else EVERY_STAGE - {s for s in EVERY_STAGE if "online" in s})
    for s in stages.values():
        assert STAGE_KEYS <= set(s), s["stage"]
        assert s["fits"] and 0 < s["memory_bytes_per_chip"] < s["hbm_bytes_per_chip"] < 16 * 2**30
        assert s["roofline_seconds_per_step"] > 0 and s["flops_per_step"] > 0
    assert stages["rollout_decode"]["estimated_tokens_per_s_per_chip"] > 0
    assert 0 < stages["train"]["estimated_mfu"] < 1
    # A step of the train stage does at least the model's matmul FLOPs on every chip's share of the batch.
    policy, _ = programs.model_configs(cfg)
    model_flops = 6 * policy.num_params * cfg.train.batch_size * cfg.train.seq_len / 4
    assert stages["train"]["flops_per_step"] > 0.8 * model_flops
    # Rollouts run on the sampler's table (no fsdp split of weights): no weight is gathered per token.
    assert stages["rollout_decode"]["weight_all_gather_bytes_per_step"] == 0
    json.dumps(out)  # the CLI's --json
    assert "rollout_decode" in result.table()


def test_online_rl_compiles_its_reference_log_probs_and_counts_what_it_holds(v5e_2x2):
    # Online RL holds its train state beside the reference's log-probs (and its rollouts), and the
    # reference beside its step: those count against the chip too.
    cfg = tiny_config()
    cfg.methods = ("reference", "online_rl")
    _, devices = v5e_2x2
    chip, mesh = chips.CHIPS["v5e"], sharding.make_mesh({"data": -1}, devices=devices)
    progs = {p.stage: p for p in programs.programs(cfg, mesh, programs.Shapes(prompt_tokens=40, feedback_tokens=9))}
    assert {"online_rl_rollout_prefill", "online_rl_rollout_decode", "online_rl_logprobs", "online_rl_train"} <= set(progs)
    assert "train" not in progs and "rollout_decode" not in progs
    reports = {k: analysis.analyze(progs[k], mesh, chip, 16 * 2**30) for k in ("online_rl_logprobs", "online_rl_train")}
    held = {k: r.resident_bytes_per_chip for k, r in reports.items()}
    assert held["online_rl_logprobs"] > 2 * held["online_rl_train"] > 0  # state (params + Adam) vs params
    for r in reports.values():
        assert r.fits and r.memory_bytes_per_chip > r.resident_bytes_per_chip and r.flops_per_step > 0
    # One forward per token (no backward): about a third of the train step's FLOPs.
    ratio = reports["online_rl_logprobs"].flops_per_step / reports["online_rl_train"].flops_per_step
    assert 0.2 < ratio < 0.5, ratio
    assert reports["online_rl_logprobs"].estimated_tokens_per_s_per_chip > 0


def test_rows_that_do_not_divide_the_devices_are_an_error_naming_the_knob(v5e_2x2):
    _, devices = v5e_2x2
    mesh = sharding.make_mesh({"data": -1}, devices=devices)
    cfg = tiny_config(micro_batches=8)  # 16 rows in 8 micro-batches: 2 rows over 4 devices
    with pytest.raises(ValueError, match=r"2 rows .* data x fsdp = 4 devices.*train.batch_size / train.micro_batches"):
        programs.programs(cfg, mesh, programs.Shapes(prompt_tokens=40))


def test_a_stage_that_does_not_fit_fails_naming_it_the_memory_and_the_knobs(v5e_2x2):
    # The tiny model's train step at 128 x 32768 tokens in one micro-batch: far over a v5e's 16 GiB.
    cmd = [sys.executable, "-m", "drift_jax.preflight", "--config=configs/quickstart_drift.py", "--topology=v5e:2x2",
           "--config.train.batch_size=128", "--config.train.seq_len=32768", "--config.max_new_tokens=8"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 1, out.stderr[-3000:]
    message = out.stderr.strip().splitlines()[-1]
    assert message.startswith("stage train does not fit on v5e:2x2: it needs ")
    need, have = (float(v) for v in re.findall(r"([\d.]+) GiB", message)[::3][:2])
    assert need > have and have == pytest.approx(15.75, abs=0.01)
    assert "train.micro_batches" in message and "model.remat" in message and "mesh" in message


def test_cli_checks_the_config_first_as_main_does():
    # A bad value stops it before anything compiles, with validate's message; files that the run's
    # machine must have (a preset's weights, the task files) are listed but do not stop it.
    cmd = [sys.executable, "-m", "drift_jax.preflight", "--config=configs/paper_qwen2_5_3b.py", "--topology=v5e:4x8",
           "--config.model.preset=qwen2_5_3b", "--config.drift.beta=-1", "--config.train.micro_batches=3"]
    out = subprocess.run(cmd, check=False, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1 and not out.stdout, out.stderr[-3000:]
    assert "error: 2 problem(s) with the config (nothing was run):" in out.stderr
    assert "drift.beta=-1" in out.stderr and "train.batch_size=128 must be a multiple of train.micro_batches=3" in out.stderr
    assert "not checked here" in out.stderr and "task: task metamath_math reads local files" in out.stderr


def test_a_gpu_slice_compiles_without_a_gpu_where_the_cuda_plugin_is_installed():
    # The jax CUDA plugin (jax-cuda12-plugin and jax-cuda12-pjrt at the jax version) describes an H100
    # from XLA's target config; no GPU, driver or CUDA toolkit is needed to compile for it.
    import importlib.util

    try:
        plugin = importlib.util.find_spec("jax_plugins.xla_cuda12")
    except ModuleNotFoundError:  # no jax_plugins package at all
        plugin = None
    if plugin is None:
        reason = "the jax CUDA plugin is not installed (pip install jax-cuda12-plugin jax-cuda12-pjrt at the jax version)"
        print(f"\nSKIPPED gpu preflight: {reason}", file=sys.stderr)
        pytest.skip(reason)
    chip, devices = chips.topology_devices("h100:8")
    assert chip.name == "h100" and len(devices) == 8 and devices[0].platform == "gpu"
    mesh = sharding.make_mesh({"data": -1}, devices=devices)
    train = next(p for p in programs.programs(tiny_config(), mesh, programs.Shapes(prompt_tokens=40)) if p.stage == "train")
    r = analysis.analyze(train, mesh, chip, chip.hbm_bytes)
    assert r.fits and r.flops_per_step > 0 and r.hbm_bytes_per_step > 0 and 0 < r.estimated_mfu < 1


def test_chip_table_covers_the_named_generations():
    for name in ("v4", "v5e", "v5p", "v6e"):
        chip = chips.CHIPS[name]
        assert chip.hbm_bytes >= 16 * 2**30 and chip.peak_flops > 1e14 and chip.hbm_bandwidth > 5e11
    assert chips.parse_topology("v5e:4x8") == (chips.CHIPS["v5e"], (4, 8))
    with pytest.raises(ValueError, match="topology must look like"):
        chips.parse_topology("tpu-32")
    assert math.isclose(chips.CHIPS["v5e"].peak_flops, 197e12)


@pytest.mark.slow
@pytest.mark.parametrize("config,topology", [("configs/paper_qwen2_5_3b.py:model.preset=qwen2_5_3b", "v5e:4x8"),
                                             ("configs/llama3_1_8b.py:model.preset=llama3_1_8b", "v5e:8x8")])
def test_paper_configs_fit_their_topologies_with_headroom(config, topology):
    cmd = [sys.executable, "-m", "drift_jax.preflight", f"--config={config}", f"--topology={topology}", "--json",
           "--headroom=0.1"]
    out = subprocess.run(cmd, check=False, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=3000)
    assert out.returncode == 0, out.stderr[-3000:]
    if os.environ.get("PREFLIGHT_JSON_DIR"):  # where the configs' docstrings take their figures from
        with open(os.path.join(os.environ["PREFLIGHT_JSON_DIR"], f"{topology}.json"), "w") as f:
            f.write(out.stdout)
    result = json.loads(out.stdout)
    assert {s["stage"] for s in result["stages"]} >= {"rollout_prefill", "rollout_decode", "train", "eval_decode"}
    for s in result["stages"]:
        assert s["memory_bytes_per_chip"] <= 0.9 * s["hbm_bytes_per_chip"], s["stage"]
