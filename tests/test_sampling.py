"""Sampler: cached decode equals the full forward, greedy equals transformers, rows are independent of
the batch and the mesh, extend equals re-prefill, full caches are reported."""

import jax
import numpy as np
import pytest
import torch
from tiny_hf import make_tiny_hf

from drift_jax.lm import decode_state, generate, hf, model, sampling, sharding

CFG = model.ModelConfig(
    vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
    qkv_bias=True, rope_theta=1000.0,
)
SAMPLED = sampling.Sampling(temperature=1.0, top_k=20, top_p=0.9)


@pytest.fixture(scope="module")
def params():
    p = model.init_params(CFG, jax.random.key(0))
    # Larger weights than the init so the distributions are peaked enough to make greedy/top-p matter.
    return jax.tree.map(lambda x: 3 * x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), p)


def _prompts(lengths, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(1, CFG.vocab_size, n).tolist() for n in lengths]


def _padded(prompts, t=None):
    t = t or max(map(len, prompts))
    out = np.zeros((len(prompts), t), np.int32)
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return out, np.array([len(p) for p in prompts], np.int32)


def _run(params, prompts, keys, n, sampling_cfg=SAMPLED, max_length=48):
    tokens, lengths = _padded(prompts)
    state, overflow = sampling.prefill(params, CFG, tokens, lengths, max_length=max_length)
    assert not np.any(overflow)
    return sampling.decode(params, CFG, state, keys, max_new_tokens=n, sampling=sampling_cfg)


def test_cached_decode_logits_equal_full_forward(params):
    prompts = _prompts([5, 12, 1])
    keys = sampling.row_keys(jax.random.key(3), 3)
    state, out = _run(params, prompts, keys, 9)
    for b, p in enumerate(prompts):
        new = out.tokens_BxN[b, : out.num_tokens_B[b]].tolist()
        seq = np.array([p + new])
        full = jax.nn.log_softmax(model.logits(params, CFG, seq)[0])
        # logprob of each sampled token under the full forward, and the next-token logits left in the state.
        want = full[np.arange(len(p) - 1, seq.shape[1] - 1), new]
        np.testing.assert_allclose(out.logprobs_BxN[b, : len(new)], want, atol=1e-4)
        np.testing.assert_allclose(jax.nn.log_softmax(state.logits_BxV[b]), full[-1], atol=1e-4)
        assert state.cache.lengths_B[b] == seq.shape[1]


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_equals_transformers_ragged(tmp_path, seed):
    hf_model = make_tiny_hf(tmp_path, "qwen2", seed=seed)
    config, hf_params = hf.load_hf(str(tmp_path))
    rng = np.random.RandomState(100 + seed)
    lengths = rng.randint(1, 20, 5)
    prompts = [rng.randint(1, config.vocab_size, n).tolist() for n in lengths]
    n_new = 12

    def transformers_generate(stops):
        t = max(lengths)
        ids = np.zeros((len(prompts), t), np.int64)  # left padding, as transformers expects
        mask = np.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, t - len(p):], mask[i, t - len(p):] = p, 1
        with torch.no_grad():
            out = hf_model.generate(
                torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), do_sample=False,
                max_new_tokens=n_new, pad_token_id=0, eos_token_id=list(stops) or None,
            )[:, t:].numpy()
        rows = []
        for row in out.tolist():
            cut = next((i + 1 for i, x in enumerate(row) if x in stops), len(row))
            rows.append(row[:cut])
        return rows

    plain = transformers_generate(())
    # Stop tokens that really occur mid-generation, so early stopping is exercised.
    stops = (plain[0][4], plain[2][7])
    want = transformers_generate(stops)
    key = jax.random.key(0)
    got = generate.generate(hf_params, config, prompts, max_new_tokens=n_new, key=key, stop_tokens=stops)
    assert got.tokens == want
    assert got.finished == [row[-1] in stops for row in want]
    assert not any(got.truncated)


def test_ragged_rows_equal_each_prompt_alone(params):
    prompts = _prompts([3, 17, 8, 1], seed=4)
    keys = sampling.row_keys(jax.random.key(5), 4)
    cfg = sampling.Sampling(temperature=0.8, top_k=30, top_p=0.95, stop_tokens=(7, 11))
    _, batch = _run(params, prompts, keys, 10, cfg)
    for b, p in enumerate(prompts):
        _, alone = _run(params, [p], keys[b : b + 1], 10, cfg, max_length=32)
        n = int(alone.num_tokens_B[0])
        assert int(batch.num_tokens_B[b]) == n
        np.testing.assert_array_equal(batch.tokens_BxN[b, :n], alone.tokens_BxN[0, :n])
        np.testing.assert_allclose(batch.logprobs_BxN[b, :n], alone.logprobs_BxN[0, :n], atol=1e-5)
        assert bool(batch.finished_B[b]) == bool(alone.finished_B[0])


def test_extend_then_decode_equals_decode_on_concatenated_prompt(params):
    prompts = _prompts([4, 9, 6], seed=7)
    keys1 = sampling.row_keys(jax.random.key(1), 3)
    keys2 = sampling.row_keys(jax.random.key(2), 3)
    state, turn1 = _run(params, prompts, keys1, 6, max_length=64)
    # Feedback for rows 0 and 2 only; row 1 is left alone (its episode ended).
    feedback = [[5, 6, 7], [], [8, 9, 10, 11, 12]]
    fb, fb_len = _padded(feedback, 5)
    state, overflow = sampling.extend(params, CFG, state, fb, fb_len)
    assert not np.any(overflow)
    active = fb_len > 0
    state, turn2 = sampling.decode(
        params, CFG, state, keys2, max_new_tokens=7, sampling=SAMPLED, active_B=active
    )
    assert int(turn2.num_tokens_B[1]) == 0
    for b in np.flatnonzero(active):
        history = prompts[b] + turn1.tokens_BxN[b, : turn1.num_tokens_B[b]].tolist() + feedback[b]
        assert int(state.cache.lengths_B[b]) == len(history) + int(turn2.num_tokens_B[b])
        _, again = _run(params, [history], keys2[b : b + 1], 7, max_length=64)
        n = int(again.num_tokens_B[0])
        np.testing.assert_array_equal(turn2.tokens_BxN[b, :n], again.tokens_BxN[0, :n])
        np.testing.assert_allclose(turn2.logprobs_BxN[b, :n], again.logprobs_BxN[0, :n], atol=1e-4)


def test_mesh_of_8_devices_equals_one_device():
    mesh = sharding.make_mesh({"data": 4, "tensor": 2})
    p1 = model.init_params(CFG, jax.random.key(9))
    p8 = model.init_sharded(CFG, jax.random.key(9), mesh)
    prompts = _prompts([2, 13, 5, 9, 1, 6], seed=8)  # 6 rows: padded to 8 for the data axis
    kw = dict(max_new_tokens=8, key=jax.random.key(4), temperature=1.0, top_p=0.9, stop_tokens=(3,))
    one = generate.generate(p1, CFG, prompts, **kw)
    eight = generate.generate(p8, CFG, prompts, mesh=mesh, **kw)
    assert eight.tokens == one.tokens
    assert eight.finished == one.finished
    for a, b in zip(eight.logprobs, one.logprobs):
        np.testing.assert_allclose(a, b, atol=1e-4)
    # The cache really is sharded by the rules table: batch over data, kv heads over tensor.
    state = decode_state.init_state(CFG, 8, 16, mesh=mesh)
    want = jax.sharding.PartitionSpec(None, "data", None, "tensor", None)
    assert state.cache.k_LxBxSxKxH.sharding.spec == want


def test_decode_chunk_per_layer_equals_stacked(params):
    """The decode chunk on `model.per_layer` params and cache (the CPU default) and on the stacked ones
    (TPU's: layer slices read in place) sample the same tokens with the same log-probs and leave the
    same cache and logits."""
    prompts = _prompts([5, 12, 1, 8], seed=9)
    tokens, lengths = _padded(prompts)
    rows = sampling.new_rows(sampling.row_keys(jax.random.key(6), 4), np.full((4, 2), 5), last_turn=2)
    plan = sampling.Plan(sampling.Sampling(temperature=1.0, top_k=20, top_p=0.9, stop_tokens=(7,)), (3, 4), 12)
    got = {}
    for per_layer in (True, False):
        state, _ = sampling.prefill(params, CFG, tokens, lengths, max_length=48)
        fn = sampling._decode_fn(CFG, None, 4, 48, 2, plan, per_layer)
        got[per_layer] = jax.device_get(fn(params, state=state, rows=rows))
    (s1, r1, c1), (s0, r0, c0) = got[True], got[False]
    np.testing.assert_array_equal(c1.tokens_BxN, c0.tokens_BxN)
    np.testing.assert_array_equal(c1.ends_BxN, c0.ends_BxN)
    assert (c1.turns_BxN == 2).any()  # the forced tokens and a second turn ran
    np.testing.assert_allclose(c1.logprobs_BxN, c0.logprobs_BxN, atol=1e-5)
    np.testing.assert_allclose(s1.logits_BxV, s0.logits_BxV, atol=1e-4)
    np.testing.assert_allclose(s1.cache.k_LxBxSxKxH, s0.cache.k_LxBxSxKxH, atol=1e-5)
    np.testing.assert_array_equal(s1.cache.lengths_B, s0.cache.lengths_B)
    jax.tree.map(np.testing.assert_array_equal, r1, r0)


def test_full_cache_is_reported_not_silently_truncated(params):
    prompts = _prompts([10, 3], seed=2)
    keys = sampling.row_keys(jax.random.key(0), 2)
    state, out = _run(params, prompts, keys, 20, sampling.Sampling(), max_length=16)
    np.testing.assert_array_equal(out.num_tokens_B, [6, 13])  # rows filled their 16 slots
    np.testing.assert_array_equal(out.truncated_B, [True, True])
    np.testing.assert_array_equal(out.finished_B, [False, False])
    np.testing.assert_array_equal(state.cache.lengths_B, [16, 16])
    # Decoding a full row emits nothing and says so; extending past the end is flagged.
    state, again = sampling.decode(params, CFG, state, keys, max_new_tokens=4)
    np.testing.assert_array_equal(again.num_tokens_B, [0, 0])
    np.testing.assert_array_equal(again.truncated_B, [True, True])
    state = decode_state.init_state(CFG, 2, 16)
    state, overflow = sampling.extend(params, CFG, state, np.ones((2, 12), np.int32), [12, 3])
    _, overflow = sampling.extend(params, CFG, state, np.ones((2, 6), np.int32), [6, 6])
    np.testing.assert_array_equal(overflow, [True, False])
    # generate sizes its cache to fit, so it never truncates.
    gen = generate.generate(params, CFG, prompts, max_new_tokens=20, key=jax.random.key(0))
    assert [len(t) for t in gen.tokens] == [20, 20] and not any(gen.truncated)


def test_generate_rejects_bad_inputs(params):
    with pytest.raises(ValueError, match="at least one token"):
        generate.generate(params, CFG, [[1, 2], []], max_new_tokens=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate.generate(params, CFG, [[1]], max_new_tokens=0, key=jax.random.key(0))
