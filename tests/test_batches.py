"""Weighted example records, packing, deterministic order and host-sharded batches."""

import numpy as np
import pytest

from drift_jax.lm import sharding
from drift_jax.train import batches


def make_examples(n=30, vocab=61, seed=0, min_len=5, max_len=20):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(min_len, max_len))
        mask = np.zeros(t, np.int8)
        mask[t // 2 :] = 1
        out.append({
            "tokens": rng.integers(0, vocab, t).astype(np.int32), "loss_mask": mask,
            "weight": np.float32(rng.uniform(0, 2)), "group_id": f"g{i // 4}", "example_id": f"e{i}",
        })
    return out


def test_arrayrecord_roundtrip(tmp_path):
    examples = make_examples(7)
    path = tmp_path / "ex.arrayrecord"
    assert batches.write_examples(path, examples) == 7
    source = batches.ExampleSource(path)
    assert len(source) == 7
    for i in (6, 0, 3):  # random access
        got, want = source[i], examples[i]
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_array_equal(got["loss_mask"], want["loss_mask"])
        assert got["weight"] == want["weight"] and got["example_id"] == f"e{i}"


def test_packing_layout_and_token_weights():
    examples = make_examples(12)
    cfg = batches.BatchConfig(batch_size=4, seq_len=40, micro_batches=2)
    b = batches.Batcher(batches.ExampleSource(examples), cfg)
    batch = b.host_batch(0)
    assert batch["tokens"].shape == (2, 2, 40) and batch["row_weight"].shape == (2, 2)
    rows = b.batch_rows(0)
    for flat, ids in enumerate(rows):
        m, r = divmod(flat, 2)
        seg = batch["segment_ids"][m, r]
        start = 0
        for s, i in enumerate(ids, start=1):
            e, n = examples[i], len(examples[i]["tokens"])
            sl = slice(start, start + n)
            np.testing.assert_array_equal(batch["tokens"][m, r, sl], e["tokens"])
            np.testing.assert_array_equal(batch["positions"][m, r, sl], np.arange(n))
            assert (seg[sl] == s).all()
            # Position p predicts token p+1; the scored positions are the mask shifted left by one.
            np.testing.assert_array_equal(batch["targets"][m, r, start : start + n - 1], e["tokens"][1:])
            np.testing.assert_array_equal(batch["scored"][m, r, start : start + n - 1], e["loss_mask"][1:] == 1)
            # token_mean: an example's token weights sum to its weight.
            np.testing.assert_allclose(batch["token_weight"][m, r, sl].sum(), e["weight"], rtol=1e-6)
            start += n
        assert (seg[start:] == 0).all() and not batch["scored"][m, r, start:].any()
        np.testing.assert_allclose(batch["row_weight"][m, r], sum(examples[i]["weight"] for i in ids), rtol=1e-6)


def test_order_is_a_pure_function_of_seed_epoch_step():
    examples = make_examples(40)
    cfg = batches.BatchConfig(batch_size=2, seq_len=32, drop_remainder=False)
    a, b = batches.Batcher(batches.ExampleSource(examples), cfg), batches.Batcher(batches.ExampleSource(examples), cfg)
    n0 = a.steps_in_epoch(0)
    # A fresh batcher asked for a late step directly (a resume) gives the same batch.
    np.testing.assert_array_equal(b.host_batch(n0 + 1)["tokens"], a.host_batch(n0 + 1)["tokens"])
    np.testing.assert_array_equal(b.host_batch(3)["tokens"], a.host_batch(3)["tokens"])
    # Every example exactly once per epoch; epochs are shuffled differently.
    epoch0 = [i for s in range(n0) for row in a.batch_rows(s) for i in row]
    assert sorted(epoch0) == list(range(40))
    epoch1 = [i for s in range(n0, n0 + a.steps_in_epoch(1)) for row in a.batch_rows(s) for i in row]
    assert sorted(epoch1) == list(range(40)) and epoch1 != epoch0
    other = batches.Batcher(batches.ExampleSource(examples), batches.BatchConfig(batch_size=2, seq_len=32, seed=1))
    assert other.batch_rows(0) != a.batch_rows(0)


def test_unpacked_rows_and_dropped_examples():
    examples = make_examples(6)
    examples.append({"tokens": np.arange(50, dtype=np.int32), "loss_mask": np.ones(50, np.int8), "weight": 1.0})
    examples.append({"tokens": np.arange(5, dtype=np.int32), "loss_mask": np.zeros(5, np.int8), "weight": 1.0})
    b = batches.Batcher(batches.ExampleSource(examples), batches.BatchConfig(batch_size=2, seq_len=24, pack=False))
    assert len(b.valid) == 6  # too long and nothing-scored are dropped
    assert all(len(row) == 1 for s in range(3) for row in b.batch_rows(s))


def test_token_sum_reduction():
    examples = make_examples(4)
    b = batches.Batcher(batches.ExampleSource(examples), batches.BatchConfig(batch_size=4, seq_len=24, pack=False,
                                                                             loss_reduction="token_sum"))
    batch = b.host_batch(0)
    for r, ids in enumerate(b.batch_rows(0)):
        w = examples[ids[0]]["weight"]
        np.testing.assert_allclose(batch["token_weight"][0, r][batch["scored"][0, r]], w)


def test_global_batch_on_mesh_equals_host_batch():
    examples = make_examples(40)
    b = batches.Batcher(batches.ExampleSource(examples), batches.BatchConfig(batch_size=8, seq_len=32, micro_batches=2))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    got, want = b.global_batch(1, mesh), b.host_batch(1)
    for k in batches.BATCH_AXES:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k])
    assert got["tokens"].sharding.spec[1] == ("data", "fsdp")


def test_bad_config():
    with pytest.raises(ValueError, match="multiple of micro_batches"):
        batches.BatchConfig(batch_size=6, seq_len=8, micro_batches=4)


def test_fingerprint_follows_the_content_not_the_lengths():
    """A re-weighting (or a changed token or mask) keeps every length but is other data: a resume must refuse it."""
    config = batches.BatchConfig(batch_size=4, seq_len=40)
    base = make_examples(12)
    fp = batches.Batcher(batches.ExampleSource(base), config).fingerprint
    assert batches.Batcher(batches.ExampleSource(make_examples(12)), config).fingerprint == fp  # deterministic
    for key, change in (("weight", lambda e: np.float32(e["weight"] * 2)),
                        ("tokens", lambda e: np.roll(e["tokens"], 1)),
                        ("loss_mask", lambda e: np.roll(e["loss_mask"], 1))):
        changed = make_examples(12)
        changed[5][key] = change(changed[5])
        assert [len(e["tokens"]) for e in changed] == [len(e["tokens"]) for e in base]
        assert batches.Batcher(batches.ExampleSource(changed), config).fingerprint != fp, key
    with_mass = make_examples(12)
    with_mass[0]["mass"] = np.float32(1.0)
    assert batches.Batcher(batches.ExampleSource(with_mass), config).fingerprint != fp
