"""TFDS builders: array_record written and read back without TensorFlow; train/dev/test; clear errors for missing files."""

import json

import pytest
import tensorflow_datasets as tfds

from drift_jax.envs import MalformedRowError, load_local, load_problems, synthetic
from drift_jax.envs.builders import builder


def test_synthetic_round_trip_through_array_record(tmp_path):
    knobs = {"num_train": 60, "num_test": 20, "seed": 1, "max_digits": 2, "modulus": 5}
    test = load_problems("synthetic", "test", tmp_path, **knobs)
    assert sorted(test, key=lambda p: p.id) == sorted(
        synthetic.make_problems("test", 20, 1, modulus=5), key=lambda p: p.id
    )
    b = builder("synthetic", tmp_path, **knobs)
    assert b.info.splits["train"].num_examples == 60
    assert list((tmp_path / "drift_synthetic").rglob("*.array_record*"))
    # plain tfds reads it too, as bytes
    row = tfds.data_source(f"drift_synthetic/{b.builder_config.name}", data_dir=str(tmp_path), split="train")[
        0
    ]
    assert (
        set(row) == {"id", "task", "question", "answer", "options", "source"} and row["task"] == b"synthetic"
    )
    # other knobs, other prepared data: never a stale reuse
    assert (
        builder("synthetic", tmp_path, **{**knobs, "modulus": 7}).builder_config.name != b.builder_config.name
    )


def test_local_files_round_trip(tmp_path):
    manual = tmp_path / "manual"
    (manual / "gpqa").mkdir(parents=True)
    (manual / "gpqa" / "train.jsonl").write_text(
        json.dumps(
            {
                "Question": "Which is a noble gas?",
                "Correct Answer": "Neon",
                "Incorrect Answer 1": "Nitrogen",
                "Incorrect Answer 2": "Oxygen",
                "Incorrect Answer 3": "Sodium",
            }
        )
        + "\n"
    )
    (p,) = load_problems("gpqa", "train", tmp_path / "data", manual)
    assert p.task == "choice" and len(p.options) == 4 and p.options["ABCD".index(p.answer)] == "Neon"
    # a second call reuses the prepared data, even with the manual files gone
    (manual / "gpqa" / "train.jsonl").unlink()
    assert load_problems("gpqa", "train", tmp_path / "data", manual) == [p]


def test_missing_manual_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="gsm8k/train"):
        load_problems("gsm8k", "test", tmp_path / "data", tmp_path / "empty")  # tfds: no such dir
    (tmp_path / "other" / "math500").mkdir(parents=True)
    (tmp_path / "other" / "math500" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"other/math500/test\*\.jsonl"):
        load_problems("math500", "test", tmp_path / "data", tmp_path / "other")


def test_missing_split_names_the_file_to_add(tmp_path):
    (tmp_path / "m" / "gsm8k").mkdir(parents=True)
    (tmp_path / "m" / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}))
    with pytest.raises(ValueError, match=r"no split 'train'.*gsm8k/train\*\.jsonl"):
        load_problems("gsm8k", "train", tmp_path / "data", tmp_path / "m")


def test_malformed_row_surfaces_through_the_builder(tmp_path):
    (tmp_path / "m" / "gsm8k").mkdir(parents=True)
    (tmp_path / "m" / "gsm8k" / "test.jsonl").write_text('{"question": "1+1?"}\n')
    with pytest.raises(MalformedRowError, match="test.jsonl: line 1: field 'answer'"):
        load_problems("gsm8k", "test", tmp_path / "data", tmp_path / "m")


def test_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown task dataset"):
        builder("gsm9k", tmp_path)
    with pytest.raises(ValueError, match="only apply to the synthetic"):
        builder("gsm8k", tmp_path, modulus=5)


def test_config_names_spell_every_op():
    from drift_jax.envs.builders import SyntheticConfig

    names = {SyntheticConfig.named(ops=ops, modulus=None).name for ops in [("max",), ("+",), ("+", "-", "*")]}
    assert len(names) == 3 and any(n.endswith("_max_s0_20000x500x500") for n in names)


def test_synthetic_dev_split_is_prepared_and_disjoint(tmp_path):
    knobs = {"num_train": 50, "num_test": 10, "num_dev": 15, "seed": 2, "max_digits": 2, "modulus": 7}
    splits = {s: load_problems("synthetic", s, tmp_path, **knobs) for s in ("train", "dev", "test")}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [50, 15, 10]
    assert sorted(splits["dev"], key=lambda p: p.id) == sorted(
        synthetic.make_problems("dev", 15, 2, modulus=7), key=lambda p: p.id)
    ids = [{p.id for p in ps} for ps in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_file_dev_split_through_the_builder(tmp_path):
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(60)]
    (tmp_path / "m" / "gsm8k").mkdir(parents=True)
    (tmp_path / "m" / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, dev = (load_problems("gsm8k", s, tmp_path / "data", tmp_path / "m") for s in ("train", "dev"))
    assert dev and len(train) + len(dev) == 60 and not {p.id for p in train} & {p.id for p in dev}
    assert {p.id for p in dev} == {p.id for p in load_local(tmp_path / "m", "gsm8k", "dev")}
