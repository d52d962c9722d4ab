"""Rollout benchmark: the continuous-batching engine vs the previous static engine on a workload of real shapes.

Run: `.venv/bin/python benchmarks/rollouts.py` (CPU, a few minutes; prints one JSON line).
Workload, identical for both engines: PROBLEMS prompts of 50-400 random tokens, K samples each, up to
TURNS turns; the response length of each (problem, sample, turn) is drawn from a log-normal (median
MEDIAN tokens, long tail) capped at max_new_tokens=512 and forced by per-row budgets (no stop tokens),
so a random model serves; an episode ends at a success drawn per (problem, sample, turn) with
probability P_SUCCESS, or after TURNS turns. Model: random Qwen2-style decoder (f32).
useful tokens = response tokens of the episodes' turns; utilisation = useful tokens / row-steps computed
(each chunk's rows, the drain's narrower widths included, x its decode steps; prefills are not decode
steps). Both engines must produce identical trajectories (checked).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
from jax._src import dispatch, monitoring  # noqa: E402
import numpy as np  # noqa: E402

from drift_jax.lm import decode_state, model, sampling  # noqa: E402
from drift_jax.rollout import engine  # noqa: E402

PROBLEMS, K, TURNS, MAX_NEW, MEDIAN, P_SUCCESS = 12, 16, 5, 512, 40, 0.3
ROWS = 16  # 12 episodes per row; the drain (no episode left to start) narrows to 8 then 4 rows
FEEDBACK = 12  # forced tokens after a turn: end of turn + feedback message
ENGINE = engine.EngineConfig(rows=ROWS, chunk_steps=8, prompt_buckets=(64, 128, 256, 512), prefill_rows=2)
CONFIG = model.ModelConfig(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=32,
                           mlp_dim=512, qkv_bias=True)


def workload(seed: int = 0):
    rng = np.random.RandomState(seed)
    keys = np.asarray(jax.random.key_data(sampling.row_keys(jax.random.key(seed), PROBLEMS * K)))
    jobs, success = [], {}
    for p in range(PROBLEMS):
        prompt = tuple(rng.randint(1, CONFIG.vocab_size, rng.randint(50, 401)).tolist())
        for s in range(K):
            lengths = np.minimum(np.ceil(rng.lognormal(np.log(MEDIAN), 1.0, TURNS)), MAX_NEW).astype(int)
            jobs.append(engine.Job(prompt, keys[p * K + s], tuple(int(x) for x in lengths), p))
            success[len(jobs) - 1] = rng.rand(TURNS) < P_SUCCESS
    return jobs, success


_COMPILE_SECONDS = [0.0]


def _on_event(event: str, seconds: float, **_) -> None:
    if event in (dispatch.BACKEND_COMPILE_EVENT, dispatch.JAXPR_TO_MLIR_MODULE_EVENT, dispatch.JAXPR_TRACE_EVENT):
        _COMPILE_SECONDS[0] += seconds


def play(run, jobs, success) -> tuple[float, engine.Stats, dict, float]:
    """Wall seconds without tracing and compiling, stats, the turns, and the compile seconds left out."""
    turns: dict = {}

    def verify(job: int, turn: int, out: engine.TurnOut) -> bool:
        turns[job, turn] = out.response_ids
        return bool(success[job][turn - 1])

    start, compiling = time.perf_counter(), _COMPILE_SECONDS[0]
    stats = run(verify)
    compiling = _COMPILE_SECONDS[0] - compiling
    return time.perf_counter() - start - compiling, stats, turns, compiling


def main():
    params = decode_state.rollout_params(model.init_params(CONFIG, jax.random.key(0)), CONFIG, None)
    jobs, success = workload()
    forced = list(range(2, 2 + FEEDBACK))
    kw = dict(rule=sampling.Sampling(temperature=1.0), forced=forced, max_new_tokens=MAX_NEW)
    runs = {
        "engine": lambda verify, jobs=jobs: engine.run(params, CONFIG, jobs, verify, ENGINE, **kw),
        "static": lambda verify, jobs=jobs: engine.run_static(params, CONFIG, jobs, verify, ROWS, **kw),
    }
    # Compile time is left out of both (the static engine compiles again for most batches, as its cache
    # and prompt shapes follow each batch; reported as static_compile_seconds).
    monitoring.register_event_duration_secs_listener(_on_event)
    results = {name: play(run, jobs, success) for name, run in runs.items()}
    (t, stats, turns, c), (t_static, stats_static, turns_static, c_static) = results["engine"], results["static"]
    if turns != turns_static:
        raise AssertionError("the engines produced different trajectories")
    useful = sum(len(x) for x in turns.values())
    print(json.dumps({
        "useful_tokens_per_s": round(useful / t, 1),
        "static_useful_tokens_per_s": round(useful / t_static, 1),
        "ratio_vs_static": round(t_static / t, 3),
        "utilisation": round(useful / stats.row_steps, 3),
        "static_utilisation": round(useful / stats_static.row_steps, 3),
        # Where the engine's other row-steps go: forced end-of-turn + feedback tokens; the rest is rows
        # idle until the chunk ends, tokens sampled past a solved episode, and idle rows of the drain
        # (fewer since it narrows the rows: `narrowed` times).
        "forced_share": round(stats.forced / stats.row_steps, 3),
        "utilisation_before_drain": round(stats.steady_sampled / stats.steady_row_steps, 3),
        "seconds": round(t, 2), "static_seconds": round(t_static, 2),
        "compile_seconds": round(c, 2), "static_compile_seconds": round(c_static, 2),
        "useful_tokens": useful, "episodes": len(jobs), "turns": len(turns),
        "rows": ROWS, "chunk_steps": ENGINE.chunk_steps, "row_widths": engine.row_widths(ROWS, ENGINE.row_buckets),
        "narrowed": stats.narrowed, "prefills": stats.prefills, "prompt_copies": stats.prompt_copies,
        "static_prefills": stats_static.prefills, "trajectories_equal": True, "devices": jax.device_count(),
    }))


if __name__ == "__main__":
    main()
