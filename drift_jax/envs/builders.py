"""TFDS builders (array_record, no TensorFlow needed) for the task datasets, and `load_problems` to read them.

The synthetic task generates its data; math and multiple choice read local files from a manual directory
(see files.py), because nothing may be downloaded at run time. Read back with `tfds.data_source` or
`load_problems`, which returns `Problem` records.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import ClassVar

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils import py_utils

from drift_jax.envs import files, synthetic
from drift_jax.envs.records import Problem

FEATURES = {
    "id": tfds.features.Text(),
    "task": tfds.features.Text(),
    "question": tfds.features.Text(),
    "answer": tfds.features.Text(),
    "options": tfds.features.Sequence(tfds.features.Text()),
    "source": tfds.features.Text(),
}


class _Builder(tfds.core.GeneratorBasedBuilder):
    """Base of our builders: the examples come from `_split_generators`, the code path from this file."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.1.0": "dev split carved from train (synthetic: from the hash range; files: records.in_dev)",
        "1.0.0": "train and test",
    }

    # tfds finds a builder's source through `importlib_resources`, a package it does not install.
    @py_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _generate_examples(self):
        raise NotImplementedError


def _info(builder: tfds.core.DatasetBuilder, description: str) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=builder, description=description, features=tfds.features.FeaturesDict(FEATURES)
    )


def _examples(problems: list[Problem]):
    for p in problems:
        yield p.id, p.to_dict()


_OP_NAMES = {"+": "p", "-": "m", "*": "t", "max": "max"}  # every op of synthetic.make_problems


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    """Sizes, seed and difficulty of the synthetic task (see synthetic.make_problems)."""

    num_train: int = 20_000
    num_test: int = 500
    num_dev: int = 500
    seed: int = 0
    num_operands: int = 2
    max_digits: int = 2
    modulus: int | None = 5
    ops: tuple[str, ...] = ("+",)

    @classmethod
    def named(cls, **knobs) -> SyntheticConfig:
        """A config whose name spells its knobs, so prepared data of other knobs is never reused."""
        c = cls(name="default", **knobs)
        ops = "".join(_OP_NAMES[o] for o in c.ops)
        sizes = f"{c.num_train}x{c.num_test}x{c.num_dev}"
        name = f"o{c.num_operands}_d{c.max_digits}_m{c.modulus}_{ops}_s{c.seed}_{sizes}"
        return dataclasses.replace(c, name=name)


class DriftSynthetic(_Builder):
    """The synthetic modular-arithmetic task."""

    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [SyntheticConfig.named()]

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(self, "Synthetic modular arithmetic for the DRIFT CPU quickstart.")

    def _split_generators(self, dl_manager):
        c = self.builder_config
        knobs = {"num_operands": c.num_operands, "max_digits": c.max_digits, "modulus": c.modulus, "ops": c.ops}
        return {
            split: _examples(synthetic.make_problems(split, n, c.seed, **knobs))
            for split, n in (("train", c.num_train), ("dev", c.num_dev), ("test", c.num_test))
        }


class _LocalBuilder(_Builder):
    """Reads `<manual_dir>/<config name>/<split>*.{jsonl,json,parquet,csv}`; every split found is built."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the files exported from the HF hub in <manual_dir>/<format>/<split>*.jsonl (or .json, .parquet, "
        "or .csv). Formats and sources:\n" + "\n".join(f"  {k}: {v[2]}" for k, v in files.FORMATS.items())
    )

    def _split_generators(self, dl_manager):
        fmt = self.builder_config.name
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError as e:  # tfds's own message does not say which files
            splits = dict.fromkeys(files.file_split(s) for s in files.FORMATS[fmt][1])
            raise FileNotFoundError(
                f"{e}\nExpected for {fmt}: "
                + ", ".join(f"{dl_manager._manual_dir}/{fmt}/{s}*.jsonl" for s in splits)
            ) from None
        found, missing = {}, []
        for split in files.FORMATS[fmt][1]:
            try:
                files.find_files(manual_dir, fmt, split)
                found[split] = _examples(files.load_local(manual_dir, fmt, split))
            except FileNotFoundError as e:
                missing.append(str(e))
            except files.EmptySplitError:
                if files.file_split(split) == split:
                    raise
                # A few training rows: no question fell in the carved split; it is left out (not an empty split).
        if not found:
            raise FileNotFoundError("\n".join(missing))
        return found


class DriftMath(_LocalBuilder):
    """MATH, MATH500, the MATH subset of MetaMathQA and GSM8K, from local files."""

    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [tfds.core.BuilderConfig(name=n) for n in ("math", "math500", "metamath_math", "gsm8k")]

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(self, "Math problems with gold answers, checked with math-verify.")


class DriftChoice(_LocalBuilder):
    """GPQA, MMLU-Pro and MMLU-Redux, from local files, options shuffled by problem id."""

    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [tfds.core.BuilderConfig(name=n) for n in ("gpqa", "mmlu_pro", "mmlu_redux")]

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(self, "Multiple-choice questions with a gold letter.")


def builder(name: str, data_dir: str | pathlib.Path, **synthetic_knobs) -> tfds.core.DatasetBuilder:
    """`synthetic` (knobs: see SyntheticConfig) or a local format (files.FORMATS), writing array_record."""
    if name == "synthetic":
        return DriftSynthetic(
            config=SyntheticConfig.named(**synthetic_knobs),
            data_dir=str(data_dir),
            file_format="array_record",
        )
    if synthetic_knobs:
        raise ValueError(f"{name}: knobs {sorted(synthetic_knobs)} only apply to the synthetic task")
    for cls in (DriftMath, DriftChoice):
        if name in {c.name for c in cls.BUILDER_CONFIGS}:
            return cls(config=name, data_dir=str(data_dir), file_format="array_record")
    raise ValueError(f"unknown task dataset {name!r}: expected 'synthetic' or one of {sorted(files.FORMATS)}")


def load_problems(
    name: str,
    split: str,
    data_dir: str | pathlib.Path,
    manual_dir: str | pathlib.Path | None = None,
    **synthetic_knobs,
) -> list[Problem]:
    """Prepares the dataset once (later calls reuse it) and returns one split as problems."""
    b = builder(name, data_dir, **synthetic_knobs)
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual_dir) if manual_dir is not None else None
        )
    )
    if split not in b.info.splits:
        expected = (
            f"; expected file: {pathlib.Path(manual_dir or '') / name}/{files.file_split(split)}*.jsonl"
            if manual_dir
            else ""
        )
        raise ValueError(
            f"{name} has no split {split!r} (prepared: {sorted(b.info.splits)}){expected}. Prepared "
            f"data is reused: delete {b.data_dir} to rebuild after adding files"
        )
    source = b.as_data_source(split)
    out = []
    for i in range(len(source)):
        row = source[i]
        row = {k: ([o.decode() for o in v] if k == "options" else v.decode()) for k, v in row.items()}
        out.append(Problem.from_dict(row))
    return out
