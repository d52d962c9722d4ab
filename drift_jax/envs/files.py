"""Local task files (JSONL, JSON, parquet or CSV as exported from the HF hub) read into problems, strictly.

A missing file names the files expected and where; a malformed row names the file, the line (JSONL, CSV)
or row (JSON array, parquet) and what is wrong; a row left out on purpose is counted and logged. A format
with training files also has a `dev` split, carved from them by a hash of each question (records.in_dev):
`train` and `dev` never share a question and are the same on any machine.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.parquet as pq

from drift_jax.envs.choice import LETTERS, choice_problem
from drift_jax.envs.math_task import boxed_contents
from drift_jax.envs.records import Problem, content_id, in_dev

log = logging.getLogger(__name__)

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")


class MalformedRowError(ValueError):
    """A row of a task file that cannot be turned into a problem."""


class EmptySplitError(ValueError):
    """A split with no problem left (all rows skipped, or a carved split no question fell in)."""


class Skip(Exception):
    """A well-formed row that is left out on purpose (the reason is counted and logged)."""


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        found = "missing" if key not in row else f"{type(value).__name__} {str(value)[:40]!r}"
        raise ValueError(f"field {key!r} must be a non-empty string, found {found}")
    return value.strip()


def _math(question: str, answer: str, source: str) -> Problem:
    return Problem(content_id("math", question, answer), "math", question, answer, source=source)


def _hendrycks_math(row: dict[str, Any]) -> Problem:  # MATH and MATH500: problem, solution[, answer]
    question = _text(row, "problem")
    if isinstance(row.get("answer"), str) and row["answer"].strip():
        return _math(question, row["answer"].strip(), "math")
    boxes = boxed_contents(_text(row, "solution"))
    if not boxes or not boxes[-1].strip():
        raise ValueError("no 'answer' field and no \\boxed{} answer in 'solution'")
    return _math(question, boxes[-1].strip(), "math")


def _metamath(row: dict[str, Any]) -> Problem:  # MetaMathQA: query, response, type; MATH_* rows only
    kind = _text(row, "type")
    if not kind.startswith("MATH_"):
        raise Skip(f"type {kind} is not in the MATH subset")
    m = re.search(r"The answer is:?\s*(.+?)\s*$", _text(row, "response"), flags=re.DOTALL)
    if not m:
        raise ValueError("'response' does not end with 'The answer is: ...'")
    return _math(_text(row, "query"), m.group(1), "metamath_math")


def _gsm8k(row: dict[str, Any]) -> Problem:  # GSM8K: question, answer ending in '#### 72'
    m = re.search(r"####\s*(.+?)\s*$", _text(row, "answer"))
    if not m:
        raise ValueError("'answer' has no '#### <number>' line")
    return _math(_text(row, "question"), m.group(1).replace(",", ""), "gsm8k")


def _gpqa(row: dict[str, Any]) -> Problem:  # GPQA: Question, Correct Answer, Incorrect Answer 1-3
    options = [_text(row, "Correct Answer")] + [_text(row, f"Incorrect Answer {i}") for i in (1, 2, 3)]
    return choice_problem(_text(row, "Question"), options, 0, "gpqa")


def _options(row: dict[str, Any], key: str) -> list[str]:
    value = row.get(key)
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value) or len(value) < 2:
        raise ValueError(f"field {key!r} must be a list of at least 2 strings, found {str(value)[:60]!r}")
    return value


def _gold_index(value: Any, n: int, key: str) -> int:
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS[:n]:
        return LETTERS.index(value.strip().upper())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    raise ValueError(f"field {key!r} must be a letter or an index among {n} options, found {value!r}")


def _mmlu_pro(row: dict[str, Any]) -> Problem:  # MMLU-Pro: question, options, answer (letter), answer_index
    options = _options(row, "options")
    gold = _gold_index(row.get("answer"), len(options), "answer")
    if "answer_index" in row and row["answer_index"] != gold:
        raise ValueError(f"'answer' {row['answer']!r} and 'answer_index' {row['answer_index']!r} disagree")
    return choice_problem(_text(row, "question"), options, gold, "mmlu_pro")


def _mmlu_redux(row: dict[str, Any]) -> Problem:  # MMLU-Redux: question, choices, answer, error_type
    error = row.get("error_type") or "ok"
    if error != "ok":
        raise Skip(f"error_type {error}")
    options = _options(row, "choices")
    return choice_problem(
        _text(row, "question"), options, _gold_index(row.get("answer"), len(options), "answer"), "mmlu_redux"
    )


FORMATS: dict[str, tuple[Callable[[dict[str, Any]], Problem], tuple[str, ...], str]] = {
    # name: (row converter, splits, where to get it); "dev" is carved from the train files (CARVED_FROM)
    "math": (_hendrycks_math, ("train", "dev", "test"), "hendrycks/competition_math or EleutherAI/hendrycks_math"),
    "math500": (_hendrycks_math, ("test",), "HuggingFaceH4/MATH-500"),
    "metamath_math": (
        _metamath,
        ("train", "dev"),
        "meta-math/MetaMathQA (MetaMathQA-395K.json renamed train.json)",
    ),
    "gsm8k": (_gsm8k, ("train", "dev", "test"), "openai/gsm8k, config main"),
    "gpqa": (_gpqa, ("train", "dev"), "Idavidrein/gpqa, e.g. gpqa_diamond"),
    "mmlu_pro": (_mmlu_pro, ("test", "validation"), "TIGER-Lab/MMLU-Pro"),
    "mmlu_redux": (_mmlu_redux, ("test",), "edinburgh-dawg/mmlu-redux-2.0 (one folder per subject is fine)"),
}


CARVED_FROM = {"dev": "train"}  # a split without files of its own: the files it is carved from


def file_split(split: str) -> str:
    """The split whose files hold `split`'s problems (dev: train)."""
    return CARVED_FROM.get(split, split)


def find_files(manual_dir: str | pathlib.Path, fmt: str, split: str) -> list[pathlib.Path]:
    """The files of one split: `<manual_dir>/<fmt>/**/<split>*.{jsonl,json,parquet,csv}`, sorted (dev: the
    train files)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}, expected one of {sorted(FORMATS)}")
    root = pathlib.Path(manual_dir) / fmt
    source = file_split(split) if split in FORMATS[fmt][1] else split
    found = sorted(p for p in root.rglob(f"{source}*") if p.is_file() and p.name.endswith(EXTENSIONS))
    if not found:
        carved = f" (its {split} split is carved from them)" if source != split else ""
        raise FileNotFoundError(
            f"no {source} file for {fmt}{carved}: expected {root}/{source}*.jsonl (or .json, .parquet, .csv; "
            f"subfolders allowed), as exported from the HF hub dataset {FORMATS[fmt][2]}. "
            "Nothing is downloaded at run time."
        )
    return found


def read_rows(path: pathlib.Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) pairs, the location being "line N" or "row N", 1-based."""
    if path.suffix == ".parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            raise MalformedRowError(f"{path}: not a readable parquet file ({e})") from e
        yield from ((f"row {i}", r) for i, r in enumerate(rows, 1))
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            try:
                for row in reader:
                    yield f"line {reader.line_num}", row
            except (UnicodeDecodeError, csv.Error) as e:
                raise MalformedRowError(f"{path}: line {reader.line_num + 1}: {e}") from e
    else:
        lines = path.read_bytes().splitlines()
        if path.suffix == ".json" and lines and lines[0].lstrip().startswith(b"["):
            try:
                rows = json.loads(b"\n".join(lines))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise MalformedRowError(
                    f"{path}: line {getattr(e, 'lineno', '?')}: invalid JSON ({e})"
                ) from e
            yield from ((f"row {i}", r) for i, r in enumerate(rows, 1))
            return
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise MalformedRowError(f"{path}: line {n}: not UTF-8 ({e.reason} at byte {e.start})") from e
            except json.JSONDecodeError as e:
                raise MalformedRowError(
                    f"{path}: line {n}: invalid JSON ({e.msg} at column {e.colno})"
                ) from e


def load_local(manual_dir: str | pathlib.Path, fmt: str, split: str) -> list[Problem]:
    """All problems of a split, in file order, duplicates (equal ids) dropped; skips counted and logged.
    Of the train files, `train` keeps the questions outside the dev split and `dev` the others."""
    convert = FORMATS[fmt][0] if fmt in FORMATS else None
    carves = fmt in FORMATS and "dev" in FORMATS[fmt][1] and file_split(split) == "train"
    problems: dict[str, Problem] = {}
    skipped: collections.Counter[str] = collections.Counter()
    for path in find_files(manual_dir, fmt, split):
        for where, row in read_rows(path):
            try:
                if not isinstance(row, dict):
                    raise ValueError(f"expected an object, found {type(row).__name__}")  # noqa: TRY004
                problem = convert(row)
            except Skip as e:
                skipped[str(e)] += 1
                continue
            except ValueError as e:
                raise MalformedRowError(f"{path}: {where}: {e}") from e
            if problem.id in problems:
                skipped["duplicate of an earlier problem"] += 1
            problems.setdefault(problem.id, problem)
    if carves:
        kept = {k: p for k, p in problems.items() if in_dev(p.question) == (split == "dev")}
        log.info("%s/%s: %d of the %d problems of the train files", fmt, split, len(kept), len(problems))
        problems = kept
    for reason, count in sorted(skipped.items()):
        log.warning("%s/%s: skipped %d rows: %s", fmt, split, count, reason)
    log.info("%s/%s: %d problems", fmt, split, len(problems))
    if not problems:
        raise EmptySplitError(f"{fmt}/{split}: no problems left in {manual_dir}/{fmt} (skipped: {dict(skipped)})")
    return list(problems.values())
