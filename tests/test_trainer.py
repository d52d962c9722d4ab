"""trainer.run: metrics logged, the NaN stop keeps the last good checkpoint, data that fills no batch is an error."""

import json

import jax
import pytest

from drift_jax.lm import model, sharding
from drift_jax.train import trainer
from tests.test_batches import make_examples
from tests.test_update import CFG, TC


@pytest.fixture(scope="module")
def params():
    return model.init_params(CFG, jax.random.key(0))


def test_run_logs_and_nan_stops_without_overwriting_checkpoint(tmp_path, params):
    examples = make_examples(60)
    mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])  # 2 rows per batch: one per device
    # An absurd learning rate: step 1 is finite, its update blows the params up, step 2's loss is not.
    tc = TC.__class__(**{**TC.__dict__, "lr": 1e30, "save_every": 1, "batch_size": 2})
    with pytest.raises(trainer.NonFiniteLossError, match="at step 2.*last good checkpoint is step 1"):
        trainer.run(tc, CFG, examples, params, tmp_path, mesh)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [1]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1]
    assert {"loss", "weight_mass", "grad_norm", "tokens_per_s", "lr"} <= set(lines[0])
    assert any(p.name.startswith("events") for p in (tmp_path / "tb").iterdir())


def test_data_that_fills_no_batch_is_an_error_not_an_untrained_policy(tmp_path, params):
    examples = make_examples(3)  # packed into fewer rows of seq_len than one batch of 8
    with pytest.raises(ValueError, match="no optimizer step to take.*batch_size=8"):
        trainer.run(TC, CFG, examples, params, tmp_path, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
