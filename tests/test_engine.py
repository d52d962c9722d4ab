"""Rollout engine: equals the previous engine (golden) and the static engine, independent of rows, the
drain's narrowing and mesh, sampler log-probs equal the training forward's, one compile per stage and
row width, no weight all-gather."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rollout_fixture as fx

from drift_jax.lm import decode_state, model, sampling, sharding
from drift_jax.rollout import engine, episodes

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "engine_trajectories.json")


def _golden_params():
    # A peaked policy whose end-of-turn token is as likely as its favourite token: turns both stop and
    # hit their budget.
    params = jax.tree.map(lambda x: 3 * x, fx.params(3))
    params["lm_head"] = params["lm_head"].at[:, fx.CHAT.end_of_turn_id].set(params["lm_head"][:, 123] - 0.3)
    return params


def _tokens(records):
    return [(r["problem_id"], r["sample"], [t["response_ids"] for t in r["turns"]]) for r in records]


def test_engine_equals_the_previous_engine_golden():
    """tests/golden/engine_trajectories.json was written by the engine before this one (static turn
    barrier, hand-written decode step; commit bde7ed1) at temperature 1. If it changes, the sampler's
    randomness or numerics changed: find out why before regenerating it (never just regenerate)."""
    with open(GOLDEN) as f:
        golden = json.load(f)
    cfg = episodes.EpisodeConfig(**golden["episode"])
    rows = [(p, s) for p in fx.problems(5) for s in range(3)]
    recs = episodes.run_episodes(_golden_params(), fx.CFG, fx.CHAT, [p for p, _ in rows], [s for _, s in rows], cfg,
                                 seed=golden["seed"], engine=engine.EngineConfig(rows=4, chunk_steps=5, prompt_buckets=(32, 64)))
    want = golden["records"]
    assert _tokens(recs) == [(r["problem_id"], r["sample"], [t["response_ids"] for t in r["turns"]]) for r in want]
    for r, w in zip(recs, want):
        for t, u in zip(r["turns"], w["turns"]):
            assert t["truncated"] == u["truncated"]
            np.testing.assert_allclose(t["logprobs"], u["logprobs"], atol=1e-5)


CFG = model.ModelConfig(vocab_size=67, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=48, qkv_bias=True)
FORCED = [3, 4, 5, 6]  # end of turn, then a 3-token feedback


def _params(config=CFG, seed=0):
    return jax.tree.map(lambda x: 2 * x, model.init_params(config, jax.random.key(seed)))


def _workload(n_problems, k, turns, seed=0, lengths=(5, 30), vocab=CFG.vocab_size):
    """Jobs with random prompts, per-turn budgets and a success drawn per (job, turn)."""
    rng = np.random.RandomState(seed)
    keys = np.asarray(jax.random.key_data(sampling.row_keys(jax.random.key(seed), n_problems * k)))
    jobs, success = [], []
    for p in range(n_problems):
        prompt = tuple(rng.randint(7, vocab, rng.randint(*lengths)).tolist())
        for s in range(k):
            jobs.append(engine.Job(prompt, keys[len(jobs)], tuple(rng.randint(1, 9, turns).tolist()), p))
            success.append(rng.rand(turns) < 0.3)
    return jobs, success


def _play(run, jobs, success):
    turns = {}

    def verify(j, t, out):
        turns[j, t] = (out.response_ids, out.logprobs, out.finished)
        return bool(success[j][t - 1])

    stats = run(verify)
    return turns, stats


RULE = sampling.Sampling(temperature=1.0, stop_tokens=(3, 10, 11, 12, 13, 14, 15))  # end of turn among them


# Slow: the unsharded engine against the static engine also runs in CI in tests/test_benchmarks.py (rollouts).
@pytest.mark.parametrize("on_mesh", [pytest.param(False, marks=pytest.mark.slow), True])
def test_engine_equals_static_engine_and_ignores_rows_chunks_and_mesh(on_mesh):
    params = _params()
    jobs, success = _workload(5, 3, 3, seed=1)
    kw = dict(rule=RULE, forced=FORCED, max_new_tokens=8)
    static, _ = _play(lambda v: engine.run_static(params, CFG, jobs, v, 16, **kw), jobs, success)
    assert any(ok for _, _, ok in static.values()) and not all(ok for _, _, ok in static.values())
    assert len({len(x) for x in [[t for (j, t) in static if j == i] for i in range(15)]}) > 1  # episodes end early
    cases = {False: (engine.EngineConfig(rows=3, chunk_steps=4, prompt_buckets=(32,)), None),
             True: (engine.EngineConfig(rows=8, chunk_steps=7, prompt_buckets=(16, 32), prefill_rows=1),
                    sharding.make_mesh({"data": 4, "tensor": 2}))}
    cfg, m = cases[on_mesh]
    p = decode_state.rollout_params(params, CFG, m)
    got, stats = _play(lambda v: engine.run(p, CFG, jobs, v, cfg, mesh=m, **kw), jobs, success)
    assert got.keys() == static.keys()
    for key in static:
        assert got[key][0] == static[key][0] and got[key][2] == static[key][2]
        np.testing.assert_allclose(got[key][1], static[key][1], atol=1e-5)
    assert stats.prefills < len(jobs)  # samples of a problem share a prefill
    assert stats.prompt_copies >= 1  # also samples that start later (a busy row's prompt copied)
    assert stats.narrowed >= 1  # the drain's narrower states are covered


def test_the_drain_narrows_rows_without_changing_trajectories():
    """row_buckets > 1: the drain moves busy rows into narrower states: the same turns, fewer row-steps
    computed (and only in the drain)."""
    params = _params()
    jobs, success = _workload(5, 3, 3, seed=1)
    kw = {"rule": RULE, "forced": FORCED, "max_new_tokens": 8}
    out = {}
    for n in (1, 3):
        cfg = engine.EngineConfig(rows=6, chunk_steps=4, prompt_buckets=(32,), row_buckets=n)
        out[n] = _play(lambda v, cfg=cfg: engine.run(params, CFG, jobs, v, cfg, **kw), jobs, success)
    (wide, s1), (narrow, s3) = out[1], out[3]
    assert wide == narrow
    assert s1.narrowed == 0 and s3.narrowed >= 1
    assert s3.steady_row_steps == s1.steady_row_steps and s3.row_steps < s1.row_steps
    assert s3.sampled == s1.sampled == sum(len(t[0]) for t in wide.values())


def _rescored(params, config, jobs, turns):
    """Sampler log-probs vs one training-path forward (no cache) over each whole trajectory."""
    worst = 0.0
    for j, job in enumerate(jobs):
        seq, where = list(job.prompt_ids), []
        for t in range(1, len(job.budgets) + 1):
            if (j, t) not in turns:
                break
            ids, logps, finished = turns[j, t]
            if t > 1:
                prev_finished = turns[j, t - 1][2]
                seq += FORCED[1:] if prev_finished else FORCED
            where += [(len(seq) + i, lp) for i, lp in enumerate(logps)]
            seq += ids
        logp = jax.nn.log_softmax(model.logits(params, config, np.array([seq]))[0].astype(jnp.float32), -1)
        for pos, lp in where:
            worst = max(worst, abs(float(logp[pos - 1, seq[pos]]) - lp))
    return worst


# Slow: bfloat16 (float32 pins the same code path in CI at a tighter tolerance).
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-6), pytest.param("bfloat16", 0.06, marks=pytest.mark.slow)])
def test_sampler_logprobs_equal_training_forward(dtype, tol):
    """float32: equal to the training path within 2e-6 (reduction order only); bfloat16 (bf16 KV cache):
    within 0.06 nats, the spread of bf16 rounding of activations computed in different shapes."""
    config = CFG.replace(dtype=dtype)
    params = _params()
    jobs, success = _workload(3, 2, 3, seed=2)
    p = decode_state.rollout_params(params, config, None)
    turns, _ = _play(lambda v: engine.run(p, config, jobs, v, engine.EngineConfig(rows=4, chunk_steps=6, prompt_buckets=(32,)),
                                          rule=RULE, forced=FORCED, max_new_tokens=8), jobs, success)
    assert _rescored(params, config, jobs, turns) <= tol


def test_a_stage_compiles_decode_once_per_row_width_and_prefill_once_per_bucket():
    config = CFG.replace(vocab_size=71)  # a model no other test compiles for
    params = _params(config)
    jobs, success = _workload(6, 2, 2, seed=3, lengths=(30, 401), vocab=71)
    buckets = (64, 128, 256, 512)
    used = {next(b for b in buckets if b >= len(j.prompt_ids)) for j in jobs}
    cfg = engine.EngineConfig(rows=8, chunk_steps=8, prompt_buckets=buckets, prefill_rows=1)
    before = dict(sampling.TRACES)
    for _ in range(2):  # a second stage compiles nothing
        stats = engine.run(params, config, jobs, lambda j, t, o: bool(success[j][t - 1]), cfg, rule=RULE,
                           forced=FORCED, max_new_tokens=8)
    assert stats.narrowed >= 1
    assert sampling.TRACES["decode"] - before.get("decode", 0) == 1 + stats.narrowed
    assert sampling.TRACES["refill"] - before.get("refill", 0) == len(used) > 1


def _loop_collectives(hlo: str, op: str = "all-gather") -> list[str]:
    """Result shapes of `op` in the computations the decode chunk's while loop runs (its body and all
    it calls: the layers, fusions)."""
    comps, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            name = head.group(1)
            comps[name] = []
        elif name:
            comps[name].append(line)
    entry = next(n for n in comps if re.search(rf"^ENTRY %?{re.escape(n)} ", hlo, re.M))
    roots = [m for line in comps[entry] for m in re.findall(r"body=%?([\w.\-]+)", line)]
    seen, todo = set(), list(roots)
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            todo += re.findall(r"(?:body|condition|calls|to_apply)=%?([\w.\-]+)", line)
            todo += [x.strip(" %") for group in re.findall(r"branch_computations=\{([^}]*)\}", line) for x in group.split(",")]
    return [m.group(1) for c in seen for line in comps[c] for m in [re.search(rf"= (\S+) {op}(?:-start)?\(", line)] if m]


def _compiled_decode(params, config, mesh):
    b, s = 8, 64
    state = decode_state.init_state(config, b, s, mesh=mesh)
    rows = sampling.new_rows(sampling.row_keys(jax.random.key(0), b), np.full((b, 1), 4))
    rows = jax.tree.map(lambda x: jax.device_put(x, decode_state._rows(mesh, np.shape(x))), rows)
    plan = sampling.Plan(RULE, tuple(FORCED), 4)
    with decode_state._in_layout(mesh):
        fn = sampling._decode_fn(config, mesh, b, s, 1, plan)
        return fn.lower(params, state=state, rows=rows).compile().as_text()


@pytest.mark.parametrize("shape", [{"data": 2, "fsdp": 4, "tensor": 1}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_decode_all_gathers_no_weights(shape):
    """In the training (fsdp) layout the decode program all-gathers the weights (XLA:CPU hoists them
    out of the loop, once per chunk; on TPU they stay in the loop, once per token); in the rollout
    layout it all-gathers no parameter at all, in or out of the loop (activations only, e.g. logits)."""
    config = CFG.replace(vocab_size=64, hidden_size=64, mlp_dim=96)
    mesh = sharding.make_mesh(shape)
    train_params = model.init_sharded(config, jax.random.key(0), mesh)
    param_shapes = {tuple(x.shape) for x in jax.tree.leaves(train_params)}
    param_shapes |= {s[1:] for s in param_shapes if len(s) > 1}  # one layer's slice

    def weight_gathers(shapes):
        dims = [tuple(int(d) for d in re.findall(r"\d+", s.split("{")[0].split("[", 1)[1])) for s in shapes if "[" in s]
        return [d for d in dims if d in param_shapes]

    if shape["tensor"] == 1:
        hlo = _compiled_decode(train_params, config, mesh)
        assert weight_gathers(re.findall(r"= (\S+) all-gather(?:-start)?\(", hlo))  # the test can fail
    hlo = _compiled_decode(decode_state.rollout_params(train_params, config, mesh), config, mesh)
    assert weight_gathers(re.findall(r"= (\S+) all-gather(?:-start)?\(", hlo)) == []
    assert weight_gathers(_loop_collectives(hlo)) == []
