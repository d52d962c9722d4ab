"""Local task files: every hub format, stable ids, the dev split carved from train, and a clear error for each bad-file case."""

import hashlib
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drift_jax.envs import MalformedRowError, check_math, load_local
from drift_jax.envs.files import find_files
from drift_jax.envs.records import in_dev


def _jsonl(path, rows, raw_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(raw_lines))
    return path


def _parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


GSM = [
    {"question": "Tom has 3 apples and buys 1,000 more. How many?", "answer": "3 + 1000 = 1003\n#### 1,003"},
    {"question": "2 + 2?", "answer": "#### 4"},
]
MATH = [
    {"problem": "Simplify $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1"},
    {"problem": "Solve $x+1=4$.", "solution": "So $x = \\boxed{3}$."},
]
GPQA = [
    {
        "Question": "Which is a noble gas?",
        "Correct Answer": "Neon",
        "Incorrect Answer 1": "Nitrogen",
        "Incorrect Answer 2": "Oxygen",
        "Incorrect Answer 3": "Sodium",
    }
]


def test_every_format(tmp_path):
    _parquet(tmp_path / "gsm8k" / "main" / "test-00000-of-00001.parquet", GSM)
    _jsonl(tmp_path / "math" / "train.jsonl", MATH)
    _jsonl(
        tmp_path / "math500" / "test.jsonl", [{"problem": "1+1?", "solution": "\\boxed{2}", "answer": "2"}]
    )
    (tmp_path / "metamath_math").mkdir()
    (tmp_path / "metamath_math" / "train.json").write_text(
        json.dumps(
            [
                {"query": "What is 1/2 + 1/2?", "response": "Sum.\nThe answer is: 1", "type": "MATH_AnsAug"},
                {"query": "Apples?", "response": "The answer is: 4", "type": "GSM_AnsAug"},
            ]
        )
    )
    (tmp_path / "gpqa").mkdir()
    with (tmp_path / "gpqa" / "train_diamond.csv").open("w") as f:
        import csv

        w = csv.DictWriter(f, fieldnames=list(GPQA[0]))
        w.writeheader()
        w.writerows(GPQA)
    _jsonl(
        tmp_path / "mmlu_pro" / "test.jsonl",
        [{"question": "2*3?", "options": ["5", "6", "7", "8", "9"], "answer": "B", "answer_index": 1}],
    )
    _parquet(
        tmp_path / "mmlu_redux" / "anatomy" / "test-00000.parquet",
        [
            {
                "question": "Bones in adult?",
                "choices": ["206", "300", "12", "1"],
                "answer": 0,
                "error_type": "ok",
            },
            {
                "question": "Bad?",
                "choices": ["a", "b", "c", "d"],
                "answer": 1,
                "error_type": "bad_question_clarity",
            },
        ],
    )

    gsm = load_local(tmp_path, "gsm8k", "test")
    assert [p.answer for p in gsm] == ["1003", "4"] and gsm[0].task == "math" and gsm[0].source == "gsm8k"
    assert [p.answer for p in load_local(tmp_path, "math", "train")] == ["\\frac{1}{2}", "3"]
    assert check_math("<answer>0.5</answer>", load_local(tmp_path, "math", "train")[0].answer)
    assert load_local(tmp_path, "math500", "test")[0].answer == "2"
    (meta,) = load_local(tmp_path, "metamath_math", "train")
    assert meta.answer == "1" and meta.source == "metamath_math"
    (gpqa,) = load_local(tmp_path, "gpqa", "train")
    assert gpqa.task == "choice" and gpqa.options["ABCD".index(gpqa.answer)] == "Neon"
    (pro,) = load_local(tmp_path, "mmlu_pro", "test")
    assert len(pro.options) == 5 and pro.options["ABCDE".index(pro.answer)] == "6"
    (redux,) = load_local(tmp_path, "mmlu_redux", "test")
    assert redux.options["ABCD".index(redux.answer)] == "206"


def test_ids_are_content_hashes_stable_across_files_and_runs(tmp_path):
    a = load_local(_jsonl(tmp_path / "a" / "gsm8k" / "test.jsonl", GSM).parent.parent, "gsm8k", "test")
    b = load_local(
        _parquet(tmp_path / "b" / "gsm8k" / "test.parquet", GSM[::-1]).parent.parent, "gsm8k", "test"
    )
    assert {p.id for p in a} == {p.id for p in b}
    # A golden value: if it changes, prompt ids of stored rollouts change. Only change it on purpose.
    assert a[1].id == "42245fcbaca9e5d4"
    blob = json.dumps(["math", "2 + 2?", "4"], ensure_ascii=False, separators=(",", ":")).encode()
    assert a[1].id == hashlib.sha256(blob).hexdigest()[:16]  # task, question, gold: nothing machine-specific


def test_skipped_rows_are_counted_in_the_log(tmp_path, caplog):
    _jsonl(
        tmp_path / "metamath_math" / "train.jsonl",
        [
            {"query": "q1", "response": "The answer is: 1", "type": "MATH_SV"},
            {"query": "q1", "response": "The answer is: 1", "type": "MATH_SV"},
            {"query": "q2", "response": "The answer is: 2", "type": "GSM_SV"},
            {"query": "q3", "response": "The answer is: 3", "type": "GSM_FOBAR"},
        ],
    )
    with caplog.at_level(logging.INFO):
        assert len(load_local(tmp_path, "metamath_math", "train")) == 1
    log = caplog.text
    assert "skipped 1 rows: duplicate" in log
    assert "skipped 1 rows: type GSM_SV is not in the MATH subset" in log
    assert "skipped 1 rows: type GSM_FOBAR" in log
    assert "metamath_math/train: 1 problems" in log


def test_missing_file_names_what_is_expected_and_where(tmp_path):
    _jsonl(tmp_path / "gsm8k" / "train.jsonl", GSM)
    with pytest.raises(FileNotFoundError) as e:
        load_local(tmp_path, "gsm8k", "test")
    assert f"{tmp_path}/gsm8k/test*.jsonl" in str(e.value) and "openai/gsm8k" in str(e.value)
    with pytest.raises(FileNotFoundError, match="MATH-500"):
        find_files(tmp_path / "nowhere", "math500", "test")
    with pytest.raises(ValueError, match="unknown format"):
        find_files(tmp_path, "gsm9k", "test")


BAD_ROWS = [
    # (format, rows, raw lines appended, expected message parts)
    ("gsm8k", GSM, ['{"question": "x", "answer": \n'], ["line 3", "invalid JSON"]),
    ("gsm8k", GSM[:1] + [{"answer": "#### 4"}], [], ["line 2", "'question'", "missing"]),
    ("gsm8k", [{"question": "x", "answer": "four"}], [], ["line 1", "####"]),
    ("gsm8k", [{"question": 7, "answer": "#### 7"}], [], ["line 1", "'question'", "int"]),
    ("gsm8k", [], ["[1, 2]\n"], ["line 1", "expected an object"]),
    ("math", [{"problem": "p", "solution": "no box here"}], [], ["line 1", "\\boxed"]),
    (
        "metamath_math",
        [{"query": "q", "response": "no final line", "type": "MATH_SV"}],
        [],
        ["The answer is"],
    ),
    (
        "mmlu_pro",
        [{"question": "q", "options": ["a", "b"], "answer": "C"}],
        [],
        ["line 1", "'answer'", "'C'"],
    ),
    (
        "mmlu_pro",
        [{"question": "q", "options": ["a", "b"], "answer": "A", "answer_index": 1}],
        [],
        ["disagree"],
    ),
    ("mmlu_pro", [{"question": "q", "options": "a, b", "answer": "A"}], [], ["'options'", "list"]),
    ("mmlu_redux", [{"question": "q", "choices": ["a", "b"], "answer": 5}], [], ["'answer'", "5"]),
    (
        "gpqa",
        [{"Question": "q", "Correct Answer": "a", "Incorrect Answer 1": "b"}],
        [],
        ["Incorrect Answer 2"],
    ),
]


@pytest.mark.parametrize("fmt,rows,raw,parts", BAD_ROWS)
def test_malformed_rows_name_file_line_and_problem(tmp_path, fmt, rows, raw, parts):
    split = {"math": "train", "metamath_math": "train", "gpqa": "train"}.get(fmt, "test")
    path = _jsonl(tmp_path / fmt / f"{split}.jsonl", rows, raw)
    with pytest.raises(MalformedRowError) as e:
        load_local(tmp_path, fmt, split)
    assert str(e.value).startswith(f"{path}: ")
    for part in parts:
        assert part in str(e.value)


def test_malformed_parquet_and_json_array(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(MalformedRowError, match="test.parquet: not a readable parquet file"):
        load_local(tmp_path, "gsm8k", "test")
    (tmp_path / "gsm8k" / "test.parquet").unlink()
    (tmp_path / "gsm8k" / "test.json").write_text(json.dumps(GSM + [{"question": "q"}]))
    with pytest.raises(MalformedRowError, match=r"test.json: row 3: field 'answer'"):
        load_local(tmp_path, "gsm8k", "test")


def test_not_utf8_names_the_line(tmp_path):
    path = _jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM)
    path.write_bytes(path.read_bytes() + b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    with pytest.raises(MalformedRowError, match=r"test.jsonl: line 3: not UTF-8"):
        load_local(tmp_path, "gsm8k", "test")


def test_a_split_with_every_row_skipped_is_an_error(tmp_path):
    _jsonl(tmp_path / "metamath_math" / "train.jsonl", [{"query": "q", "response": "x", "type": "GSM_SV"}])
    with pytest.raises(ValueError, match="no problems left"):
        load_local(tmp_path, "metamath_math", "train")


def test_dev_is_carved_from_the_train_files_by_question(tmp_path):
    """dev holds the training questions whose hash falls in the top DEV_FRACTION of the range, train the
    rest: disjoint, together the whole file, the same for the rows in any order or file format."""
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(300)]
    _jsonl(tmp_path / "a" / "gsm8k" / "train.jsonl", rows)
    _parquet(tmp_path / "b" / "gsm8k" / "train.parquet", rows[::-1])
    train, dev = (load_local(tmp_path / "a", "gsm8k", s) for s in ("train", "dev"))
    assert not {p.id for p in train} & {p.id for p in dev} and len(train) + len(dev) == 300
    assert all(in_dev(p.question) for p in dev) and not any(in_dev(p.question) for p in train)
    assert 15 <= len(dev) <= 45  # ~10% of 300
    assert [p.question for p in train] == [r["question"] for r in rows if not in_dev(r["question"])]  # file order
    assert {p.id for p in load_local(tmp_path / "b", "gsm8k", "dev")} == {p.id for p in dev}
    # A golden value: if it changes, values tuned on dev were tuned on other problems.
    assert [p.question for p in dev[:3]] == ["What is 0 + 0?", "What is 3 + 3?", "What is 25 + 25?"]


def test_dev_split_errors_name_the_train_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no train file for gsm8k \(its dev split is carved from them\)"):
        load_local(tmp_path, "gsm8k", "dev")
    _jsonl(tmp_path / "math500" / "test.jsonl", [{"problem": "1+1?", "solution": "\\boxed{2}"}])
    with pytest.raises(FileNotFoundError, match="no dev file for math500"):  # no train files: no dev either
        load_local(tmp_path, "math500", "dev")
