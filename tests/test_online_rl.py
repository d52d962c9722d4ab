"""Online RL baseline: advantages, problem schedule, KL scoring, the signed policy-gradient loss, the loop and its resume."""

import functools
import json

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from drift_jax import envs
from drift_jax.baselines import online_rl
from drift_jax.lm import model, sharding
from drift_jax.rollout import episodes, returns, supervision
from drift_jax.runtime import clock
from drift_jax.train import batches, checkpoint, update
from tests.test_batches import make_examples

CFG = model.ModelConfig(
    vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48, qkv_bias=True,
)


def test_advantages_are_centred_per_group():
    r = np.array([1.0, 0.0, 0.0, 0.5, 0.5, 0.2, 0.8])
    g = np.array(["a", "a", "a", "b", "b", "c", "c"])
    a = online_rl.advantages(r, g, scale_by_std=False)
    np.testing.assert_allclose(a, [2 / 3, -1 / 3, -1 / 3, 0, 0, -0.3, 0.3], atol=1e-6)
    s = online_rl.advantages(r, g, scale_by_std=True)
    np.testing.assert_allclose(s[[5, 6]], [-1, 1], atol=1e-4)  # std 0.3
    np.testing.assert_allclose(s[[3, 4]], [0, 0])  # a group whose returns agree teaches nothing
    for grp in "abc":
        assert abs(a[g == grp].sum()) < 1e-6


def test_iteration_problems_cover_every_problem_once_per_epoch():
    n, per = 10, 4
    seen = np.concatenate([online_rl.iteration_problems(n, per, it, seed=3) for it in range(5)])  # 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    np.testing.assert_array_equal(online_rl.iteration_problems(n, per, 2, 3), seen[8:12])  # a pure function
    assert not np.array_equal(online_rl.iteration_problems(n, per, 0, 4), seen[:4])


def _logprob(params, example):
    logits = np.asarray(model.logits(params, CFG, example["tokens"][None])[0], np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tokens, mask = example["tokens"], example["loss_mask"]
    return sum(logp[t - 1, tokens[t]] for t in range(1, len(tokens)) if mask[t])


def test_sequence_logprobs_of_packed_batches_match_the_model_on_any_mesh():
    params = model.init_params(CFG, jax.random.key(1))
    examples = make_examples(11, vocab=61)
    batcher = batches.Batcher(batches.ExampleSource(examples), batches.BatchConfig(4, 40, micro_batches=2, drop_remainder=False))
    assert any(len(row) > 1 for row in batcher.batch_rows(0))  # packed rows: several examples per row
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    got = online_rl.sequence_logprobs(params, CFG, batcher, batcher.total_steps(1), mesh)
    np.testing.assert_allclose(got, [_logprob(params, e) for e in examples], rtol=1e-4, atol=1e-4)


def test_rl_example_scores_exactly_the_sampled_tokens():
    chat = envs.ChatFormat.from_pretrained(envs.SYNTHETIC_TOKENIZER)
    eot, fb = chat.end_of_turn_id, chat.feedback_ids(envs.DEFAULT_FEEDBACK)
    record = {"problem_id": "p", "sample": 0, "prompt_ids": [5, 6, 7],
              "turns": [{"response_ids": [11, 12], "feedback_ids": fb},  # cut at max_new_tokens: no end of turn
                        {"response_ids": [13, eot], "feedback_ids": []}]}
    ex = online_rl.rl_example(record, eot)
    np.testing.assert_array_equal(ex["tokens"], [5, 6, 7, 11, 12, eot, *fb, 13, eot])
    np.testing.assert_array_equal(ex["loss_mask"], [0, 0, 0, 1, 1, 0, *[0] * len(fb), 1, 1])
    assert ex["mass"] == 1.0


def test_signed_weights_with_unit_mass_give_the_policy_gradient_loss():
    """loss = sum_i A_i * NLL_i / N: its gradient is -1/N sum_i A_i grad log pi(trajectory_i)."""
    params = model.init_params(CFG, jax.random.key(0))
    examples = make_examples(8)
    adv = np.array([0.5, -0.5, 1.0, -1.0, 0.25, -0.25, 0.0, 0.0], np.float32)
    for e, a in zip(examples, adv):
        e["weight"], e["mass"] = a, np.float32(1.0)
    batcher = batches.Batcher(batches.ExampleSource(examples),
                              batches.BatchConfig(8, 40, loss_reduction="token_sum", drop_remainder=False))
    batch = batcher.host_batch(0)
    assert batch["row_weight"].sum() == 8  # the mass, not the (zero) sum of advantages
    tx = optax.sgd(1.0)
    _, metrics = jax.jit(functools.partial(update.train_step, model_config=CFG, tx=tx))(update.init_state(params, tx), batch)
    nll = -np.array([_logprob(params, e) for e in examples])
    np.testing.assert_allclose(metrics["loss"], np.sum(adv * nll) / 8, rtol=1e-5)


def _loop_setup():
    chat = envs.ChatFormat.from_pretrained(envs.SYNTHETIC_TOKENIZER)
    cfg = model.ModelConfig(vocab_size=chat.tokenizer.get_vocab_size(), hidden_size=32, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=16, mlp_dim=64, qkv_bias=True)
    ref = model.init_params(cfg, jax.random.key(0))
    probs = envs.synthetic.make_problems("train", 6, seed=0, num_operands=2, max_digits=1, modulus=None, ops=("max",))
    episode = episodes.EpisodeConfig(max_turns=2, max_new_tokens=4, temperature=1.0)
    tc = update.TrainConfig(lr=1e-2, warmup_steps=0, batch_size=8, seq_len=64, loss_reduction="token_sum",
                             progress_bar=False, async_checkpoints=False)
    return chat, cfg, ref, probs, episode, tc


def _run(tmp_path, max_iterations, evaluated):
    chat, cfg, ref, probs, episode, tc = _loop_setup()
    config = online_rl.OnlineRLConfig(problems_per_iteration=2, samples_per_problem=3, kl_coef=0.1,
                                      budget_seconds=1e9, max_iterations=max_iterations, eval_every=2, save_every=1)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])

    def evaluate(params):
        evaluated.append(1)
        return float(len(evaluated))  # a rising "curve": only the bookkeeping is under test here

    return online_rl.run(config, tc, cfg, chat, ref, probs, episode, returns.ReturnConfig(), evaluate,
                         str(tmp_path), mesh)


def _kl_of_iteration(workdir, it):
    """Mean over iteration it's trajectories of sum over sampled tokens of log pi - log pi_ref, with pi the
    policy checkpointed after `it` iterations: replays the iteration's sampling, scores with model.logits."""
    chat, cfg, ref, probs, episode, tc = _loop_setup()
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
    tx = update.make_optimizer(tc, total_steps=1 << 30)
    target = update.abstract_state(cfg, tx, update.state_shardings(mesh, cfg, tx))
    manager = checkpoint.Checkpointer(workdir / "checkpoints").manager
    policy = manager.restore(it, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                         data=ocp.args.JsonRestore()))["state"].params
    picked = online_rl.iteration_problems(len(probs), 2, it, seed=0)
    records = episodes.run_episodes(policy, cfg, chat, [probs[i] for i in picked for _ in range(3)],
                                    [s for _ in picked for s in range(3)], episode, seed=it + 1, mesh=mesh)
    kl = []
    for r in records:
        tokens, turn = supervision.trajectory_tokens(r["prompt_ids"], [t["response_ids"] for t in r["turns"]],
                                                     [t["feedback_ids"] for t in r["turns"]], chat.end_of_turn_id)
        sampled = np.concatenate([np.flatnonzero(turn == t)[: len(x["response_ids"])]
                                  for t, x in enumerate(r["turns"], start=1)])

        def logp(params, tokens=tokens, sampled=sampled):
            logits = np.asarray(model.logits(params, cfg, tokens[None])[0], np.float64)
            logp_TxV = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            return logp_TxV[sampled - 1, tokens[sampled]].sum()

        kl.append(logp(policy) - logp(ref))
    return float(np.mean(kl))


def test_loop_trains_logs_and_resumes_exactly(tmp_path, monkeypatch):
    calls = []
    full, progress = _run(tmp_path / "full", 3, calls)
    assert progress["iteration"] == 3 and progress["optimizer_steps"] >= 3 and progress["tokens_generated"] > 0
    assert [p["iteration"] for p in progress["curve"]] == [0, 2, 3]  # start, every 2nd, the end
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    # Iteration 1 samples from the reference itself: the sampler's log pi and the scoring forward's
    # log pi_ref of the same tokens must agree, so the KL estimate is 0 (a token misalignment is not).
    assert abs(lines[0]["kl"]) < 1e-3
    _, ref, *_ = _loop_setup()[1:]
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), full, ref)
    assert max(jax.tree.leaves(moved)) > 0
    # Stopped after 2 iterations, then resumed to 3: the same parameters as the run that did not stop.
    _run(tmp_path / "split", 2, [])
    # Iteration 2 samples from the policy after one step: its logged KL equals log pi - log pi_ref of
    # the sampled tokens, each scored by a full forward of the two models here.
    split_lines = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert split_lines[1]["kl"] == pytest.approx(_kl_of_iteration(tmp_path / "split", 1), abs=2e-3)
    assert abs(split_lines[1]["kl"]) > 1e-2  # the policy moved: a test that a KL of 0 would fail
    monkeypatch.setattr(clock, "_now", lambda: 0.0)  # the rerun's own seconds are 0 on the stage's clock
    with clock.measuring() as work:
        resumed, progress2 = _run(tmp_path / "split", 3, [])
    assert progress2["iteration"] == 3 and "stage_seconds" not in progress2
    assert work.earlier > 0  # the stage's seconds saved with iteration 2's checkpoint count towards its cost
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), resumed, full)


def test_loop_refuses_a_tempered_sampler(tmp_path):
    chat, cfg, ref, probs, episode, tc = _loop_setup()
    with pytest.raises(ValueError, match="temperature 1"):
        online_rl.run(online_rl.OnlineRLConfig(), tc, cfg, chat, ref, probs,
                      episodes.EpisodeConfig(temperature=0.7), returns.ReturnConfig(), lambda p: 0.0,
                      str(tmp_path), sharding.make_mesh({"data": 1}, jax.devices()[:1]))


def test_stop_rule_past_the_budget():
    config = online_rl.OnlineRLConfig(budget_seconds=100, extend_while_rising=2.0, rise_threshold=0.01)

    def progress(seconds, values, iteration=None):
        curve = [{"iteration": 10 * i, "seconds": 0.0, "value": v} for i, v in enumerate(values)]
        return {"seconds": seconds, "iteration": curve[-1]["iteration"] if iteration is None else iteration,
                "curve": curve}

    stop = functools.partial(online_rl._should_stop, config)
    assert not stop(progress(99, [0.4, 0.3]))  # within the budget, whatever the curve does
    assert stop(progress(101, [0.4, 0.5, 0.45]))  # past it and not rising
    assert not stop(progress(101, [0.4, 0.45, 0.5]))  # still rising: one more stretch
    assert not stop(progress(101, [0.4, 0.3], iteration=25))  # between curve points: decided at the next one
    assert stop(progress(201, [0.4, 0.45, 0.5]))  # the hard limit


def test_learning_rate_reaches_its_value_after_warmup_whatever_the_budget():
    # warmup_ratio is of max_iterations; lr 1e-3 is reached at step 10 of 100 and then stays.
    cfg, total = online_rl._constant_schedule(update.TrainConfig(lr=1e-3, warmup_ratio=0.1),
                                              online_rl.OnlineRLConfig(max_iterations=100))
    schedule = update.lr_schedule(cfg, total)
    assert float(schedule(5)) == pytest.approx(5e-4) and float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(10_000)) == pytest.approx(1e-3)
    cfg, total = online_rl._constant_schedule(update.TrainConfig(lr=1e-3, warmup_steps=5), online_rl.OnlineRLConfig())
    assert float(update.lr_schedule(cfg, total)(5)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="warmup_ratio needs max_iterations"):
        online_rl._constant_schedule(update.TrainConfig(warmup_ratio=0.1), online_rl.OnlineRLConfig())
    with pytest.raises(ValueError, match="schedule must be 'constant'"):
        online_rl._constant_schedule(update.TrainConfig(schedule="cosine", warmup_steps=0), online_rl.OnlineRLConfig())
