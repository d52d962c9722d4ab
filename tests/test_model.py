"""Decoder behaviour: cache paths equal the full forward, causality, sharding, remat, bf16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drift_jax.lm import model, sharding

CFG = model.ModelConfig(
    vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
    qkv_bias=True, rope_theta=1000.0,
)


@pytest.fixture(scope="module")
def params():
    p = model.init_params(CFG, jax.random.key(0))
    # Non-trivial norms and biases so mistakes there show.
    return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), p)


def _tokens(shape, seed=0):
    return np.random.RandomState(seed).randint(0, CFG.vocab_size, shape)


def test_cached_prefill_then_decode_equals_full_forward(params):
    toks = _tokens((2, 12))
    full = model.logits(params, CFG, toks)
    cache = model.init_cache(CFG, 2, 16)
    first, cache = model.forward(params, CFG, toks[:, :7], cache=cache)
    steps = [first]
    for t in range(7, 12):
        out, cache = model.forward(params, CFG, toks[:, t : t + 1], cache=cache)
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)
    np.testing.assert_array_equal(cache.lengths_B, [12, 12])


def test_ragged_prefill_and_partial_extend(params):
    """Rows of different lengths in one call equal each row alone; num_new_B=0 leaves a row untouched."""
    toks = _tokens((3, 10), seed=2)
    lens = np.array([10, 4, 7])
    cache = model.init_cache(CFG, 3, 24)
    out, cache = model.forward(params, CFG, toks, cache=cache, num_new_B=jnp.asarray(lens))
    np.testing.assert_array_equal(cache.lengths_B, lens)
    for b, n in enumerate(lens):
        alone = model.logits(params, CFG, toks[b : b + 1, :n])
        np.testing.assert_allclose(out[b, :n], alone[0], atol=1e-5)
    # Extend only row 1 with 3 more tokens; the others keep their lengths and their cache contents.
    more = _tokens((3, 3), seed=3)
    before = cache
    out2, cache = model.forward(params, CFG, more, cache=cache, num_new_B=jnp.array([0, 3, 0]))
    np.testing.assert_array_equal(cache.lengths_B, [10, 7, 7])
    joined = np.concatenate([toks[1, :4], more[1]])[None]
    np.testing.assert_allclose(out2[1], model.logits(params, CFG, joined)[0, 4:], atol=1e-5)
    np.testing.assert_array_equal(cache.k_LxBxSxKxH[:, 0], before.k_LxBxSxKxH[:, 0])
    np.testing.assert_array_equal(cache.k_LxBxSxKxH[:, 2], before.k_LxBxSxKxH[:, 2])


def test_cache_overflow_is_clamped_not_wrapped(params):
    """Writing 6 tokens into a 4-slot cache keeps exactly the first 4 (positions 4, 5 are dropped, never
    written over slots 0, 1): the cache equals a 4-token prefill's, and the logits of those 4 tokens equal
    the full forward's."""
    toks = _tokens((1, 6))
    logits, cache = model.forward(params, CFG, toks, cache=model.init_cache(CFG, 1, 4))
    assert int(cache.lengths_B[0]) == 4  # the sampler reports the overflow
    _, fits = model.forward(params, CFG, toks[:, :4], cache=model.init_cache(CFG, 1, 4))
    np.testing.assert_allclose(cache.k_LxBxSxKxH, fits.k_LxBxSxKxH, atol=1e-6)
    np.testing.assert_allclose(cache.v_LxBxSxKxH, fits.v_LxBxSxKxH, atol=1e-6)
    np.testing.assert_allclose(logits[:, :4], model.logits(params, CFG, toks[:, :4]), atol=1e-5)
    # Wrapped writes would have put tokens 4 and 5 in slots 0 and 1: the cache would then differ there.
    _, wrapped = model.forward(params, CFG, toks[:, 4:], cache=model.init_cache(CFG, 1, 4))
    assert not np.allclose(cache.k_LxBxSxKxH[:, :, :2], wrapped.k_LxBxSxKxH[:, :, :2], atol=1e-3)


def test_packed_segments_equal_separate_sequences(params):
    a, b = _tokens((1, 5), 4), _tokens((1, 7), 5)
    packed = np.concatenate([a, b], 1)
    seg = np.array([[1] * 5 + [2] * 7])
    pos = np.array([list(range(5)) + list(range(7))])
    out, _ = model.forward(params, CFG, packed, positions_BxT=pos, segment_ids_BxT=seg)
    np.testing.assert_allclose(out[0, :5], model.logits(params, CFG, a)[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 5:], model.logits(params, CFG, b)[0], atol=1e-5)


def test_causality_no_gradient_from_future_tokens(params):
    """The loss at position t has zero gradient w.r.t. the inputs at positions after t."""
    toks = _tokens((1, 9), 6)
    t = 4
    # Give every position its own embedding row so a per-position input perturbation is a param.
    cfg = CFG.replace(vocab_size=CFG.vocab_size + 9)
    own_rows = jnp.arange(9)[None] + CFG.vocab_size
    lm_head = jnp.pad(params["lm_head"], ((0, 0), (0, 9)))

    def loss(delta_TxD):
        table = jnp.concatenate([params["embedding"], params["embedding"][toks[0]] + delta_TxD], 0)
        p = {**params, "embedding": table, "lm_head": lm_head}
        logp = jax.nn.log_softmax(model.forward(p, cfg, own_rows)[0][0, t, : CFG.vocab_size])
        return -logp[toks[0, t + 1]]

    g = jax.grad(loss)(jnp.zeros((9, CFG.hidden_size)))
    per_position = np.abs(np.asarray(g)).sum(-1)
    assert np.all(per_position[: t + 1] > 0)
    np.testing.assert_array_equal(per_position[t + 1 :], 0.0)


# Slow: full (save_matmuls, which also recomputes in the backward pass, runs in CI).
@pytest.mark.parametrize("remat", [pytest.param("full", marks=pytest.mark.slow), "save_matmuls"])
def test_remat_policies_give_same_gradients(params, remat):
    toks = _tokens((2, 8), 7)

    def loss(p, cfg):
        return jnp.mean(model.forward(p, cfg, toks)[0] ** 2)

    g0 = jax.grad(loss)(params, CFG.replace(remat="none"))  # no rematerialisation: the baseline
    g1 = jax.jit(jax.grad(loss), static_argnums=1)(params, CFG.replace(remat=remat))
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6, rtol=1e-5), g1, g0)


def test_sharded_equals_single_device(params):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    toks = _tokens((4, 10), 8)
    single = np.asarray(model.logits(params, CFG, toks))
    abstract = jax.eval_shape(lambda: params)
    shards = sharding.tree_shardings(mesh, model.param_logical_axes(CFG), abstract)
    sharded_params = jax.device_put(params, shards)
    assert sharded_params["layers"]["mlp"]["up"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    with jax.set_mesh(mesh):
        out = model.logits(sharded_params, CFG, sharding.put(toks, mesh, ("batch", "length")))
    np.testing.assert_allclose(np.asarray(out), single, atol=1e-5)


def test_init_sharded_places_params_on_mesh():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    p = model.init_sharded(CFG, jax.random.key(0), mesh)
    emb = p["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")  # 61 vocab rows not divisible by 2
    assert emb.addressable_shards[0].data.shape == (61, 16)
    ref = model.init_params(CFG, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(emb), np.asarray(ref["embedding"]), rtol=1e-6)


def test_bf16_compute_close_to_f32(params):
    """bf16 compute (f32 params) stays within 5e-2 max abs / 1% relative of f32 logits on this model."""
    toks = _tokens((2, 16), 9)
    f32 = np.asarray(model.logits(params, CFG, toks))
    bf16 = np.asarray(model.logits(params, CFG.replace(dtype="bfloat16"), toks))
    assert bf16.dtype == np.float32
    err = np.abs(bf16 - f32).max()
    assert err < 5e-2, err
    assert err / np.abs(f32).max() < 1e-2
    # and bf16 params too: the argmax agrees almost everywhere
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    both = np.asarray(model.logits(p16, CFG.replace(dtype="bfloat16", param_dtype="bfloat16"), toks))
    assert (both.argmax(-1) == f32.argmax(-1)).mean() > 0.9


def test_gqa_config_validated():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        model.ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=3, num_kv_heads=2, head_dim=4, mlp_dim=8)


def test_logits_at_one_position_per_row(params):
    """`logits_at_B` gives exactly the full forward's logits at those positions, with and without a cache."""
    toks = _tokens((3, 9), seed=7)
    at = jnp.array([8, 0, 4])
    full = model.logits(params, CFG, toks)
    want = np.stack([full[b, i] for b, i in enumerate(np.asarray(at))])[:, None]
    got, _ = model.forward(params, CFG, toks, logits_at_B=at)
    np.testing.assert_allclose(got, want, atol=1e-5)
    lens = jnp.array([9, 1, 5])
    cache = model.init_cache(CFG, 3, 16)
    got, cache = model.forward(params, CFG, toks, cache=cache, num_new_B=lens, logits_at_B=at)
    assert got.shape == (3, 1, CFG.vocab_size)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(cache.lengths_B, lens)


def test_per_layer_form_equals_the_stacked_forward(params):
    """`per_layer` params and `LayerCaches` (the CPU decode loop's form: layers unstacked, K stored as
    [B, K, H, S]): a ragged prefill then decode steps give the full forward's logits, the cache converts
    back to exactly the stacked one, and the stacked layout round-trips."""
    toks = _tokens((3, 11), seed=11)
    lens = np.array([7, 2, 5])
    stacked_cache = model.init_cache(CFG, 3, 16)
    layer_params, cache = model.per_layer(params, stacked_cache)
    assert "layers" not in layer_params and cache.k[0].shape == (3, CFG.num_kv_heads, CFG.head_dim, 16)
    first, cache = model.forward(layer_params, CFG, toks[:, :7], cache=cache, num_new_B=jnp.asarray(lens))
    want_first, stacked_cache = model.forward(params, CFG, toks[:, :7], cache=stacked_cache, num_new_B=jnp.asarray(lens))
    np.testing.assert_allclose(first, want_first, atol=1e-5)
    for i in range(4):  # one token per row, each at its own position
        step = toks[np.arange(3), lens + i][:, None]
        out, cache = model.forward(layer_params, CFG, step, cache=cache)
        want, stacked_cache = model.forward(params, CFG, step, cache=stacked_cache)
        np.testing.assert_allclose(out, want, atol=1e-5)
    for b, n in enumerate(lens + 4):
        full = model.logits(params, CFG, np.concatenate([toks[b, : lens[b]], toks[b, lens[b] : n]])[None])
        np.testing.assert_allclose(out[b, 0], full[0, -1], atol=1e-5)
    back = model.stacked(cache)
    np.testing.assert_array_equal(back.lengths_B, stacked_cache.lengths_B)
    np.testing.assert_allclose(back.k_LxBxSxKxH, stacked_cache.k_LxBxSxKxH, atol=1e-6)
    np.testing.assert_allclose(back.v_LxBxSxKxH, stacked_cache.v_LxBxSxKxH, atol=1e-6)
    again = model.stacked(model.per_layer(params, stacked_cache)[1])
    jax.tree.map(np.testing.assert_array_equal, again, stacked_cache)
