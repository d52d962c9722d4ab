"""Synthetic tasks for the CPU quickstart: seeded problems, disjoint train/dev/test splits, demonstrations.

Two families, both answered as `<answer>N</answer>` and verified exactly:
- `ops=("max",)`: the largest of `num_operands` numbers, e.g. `max 85 63 51` (answer `85`). The quickstart
  uses it: a tiny model learns it partially in a minute, its mistakes are plausible (a wrong number of
  the list, a near miss), and after "Incorrect" another candidate has a real chance, so multi-turn
  correction matters. Multi-turn demonstrations show wrong attempts that are numbers NOT in the list:
  the reference sees the chat format of feedback turns without being taught how to use the feedback.
- `ops` from `+ - *`, with a `modulus`: e.g. `85+63 mod 5` (answer `3`). Every answer lies in
  {0..modulus-1}, so retries have a small candidate set. Measured once (2 layers, width 64, 1000 steps,
  80 s on 2 shared cores): a tiny model learns the format but stays at chance on the residue and its
  output ignores the problem, so it is a poor reference for DRIFT at this scale (see README)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from drift_jax.envs.records import (
    ANSWER_TAG,
    DEFAULT_FEEDBACK,
    DEV_FRACTION,
    Problem,
    Verdict,
    content_id,
    hash_bucket,
    in_dev,
)

INSTRUCTION = "Answer in <answer></answer>."
SPLITS = ("train", "test", "dev")  # the index seeds each split's generator: append, never reorder

_MOD = re.compile(r" mod (\d+)$")


def split_of(question: str, test_fraction: float = 0.2, dev_fraction: float = DEV_FRACTION) -> str:
    """The split a question belongs to, from a hash of its text alone: the bottom `test_fraction` of the
    hash range is test, the top `dev_fraction` is dev (tuning), the rest train."""
    if hash_bucket(question) < test_fraction:
        return "test"
    return "dev" if in_dev(question, dev_fraction) else "train"


def _evaluate(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Value with the usual precedence: `*` before `+` and `-`."""
    terms, signs, product = [], [1], operands[0]
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            product *= x
        else:
            terms.append(product)
            signs.append(1 if op == "+" else -1)
            product = x
    terms.append(product)
    return sum(s * t for s, t in zip(signs, terms))


def make_problems(
    split: str,
    n: int,
    seed: int = 0,
    *,
    num_operands: int = 2,
    max_digits: int = 2,
    modulus: int | None = 5,
    ops: Sequence[str] = ("+",),
    test_fraction: float = 0.2,
    dev_fraction: float = DEV_FRACTION,
) -> list[Problem]:
    """`n` distinct problems of `split` ("train", "dev" or "test"), the same for the same arguments on any
    machine. The splits never share a question, whatever the seeds: a question's split is a hash of its text.

    Difficulty: more operands or digits, a modulus that does not divide 10 (7: every digit matters;
    2, 5, 10: only the last), `*` and `-` in `ops`; `modulus=None` asks for the plain value.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_operands < 2 or max_digits < 1 or (modulus is not None and modulus < 2):
        raise ValueError("need num_operands >= 2, max_digits >= 1, modulus >= 2 or None")
    if not (0 < test_fraction and 0 < dev_fraction and test_fraction + dev_fraction < 1):
        raise ValueError(f"need test_fraction > 0, dev_fraction > 0 and a train split left, got "
                         f"{test_fraction}, {dev_fraction}")
    if tuple(ops) == ("max",):
        modulus = None  # "max 37 82 5": the largest number; retries have a natural candidate set
    elif not ops or set(ops) - {"+", "-", "*"}:
        raise ValueError(f"ops must be ('max',) or a non-empty subset of '+', '-', '*', got {ops!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    problems: dict[str, Problem] = {}
    for _ in range(50 * n + 1000):
        if len(problems) == n:
            break
        operands = [int(x) for x in rng.integers(0, 10**max_digits, size=num_operands)]
        chosen = [str(ops[i]) for i in rng.integers(0, len(ops), size=num_operands - 1)]
        if tuple(ops) == ("max",):
            question, value = "max " + " ".join(map(str, operands)), max(operands)
        else:
            question = str(operands[0]) + "".join(f"{o}{x}" for o, x in zip(chosen, operands[1:]))
            value = _evaluate(operands, chosen)
        if modulus is not None:
            question, value = f"{question} mod {modulus}", value % modulus
        if question in problems or split_of(question, test_fraction, dev_fraction) != split:
            continue
        answer = str(value)
        problems[question] = Problem(
            content_id("synthetic", question, answer), "synthetic", question, answer, source="synthetic"
        )
    if len(problems) < n:
        raise ValueError(
            f"only {len(problems)} distinct {split} problems found, asked for {n}: "
            "raise max_digits or num_operands"
        )
    return list(problems.values())


def prompt(problem: Problem) -> str:
    return f"{problem.question}\n{INSTRUCTION}"


def extract_integer(response: str) -> str | None:
    """The integer inside the `<answer>` tags; None if missing, not an integer, or two tags disagree."""
    found = {c.strip() for c in ANSWER_TAG.findall(response)}
    if len(found) != 1:
        return None
    text = found.pop()
    return str(int(text)) if re.fullmatch(r"-?\d+", text) else None


def verify(problem: Problem, response: str) -> Verdict:
    answer = extract_integer(response)
    return Verdict(answer, answer is not None, answer is not None and int(answer) == int(problem.answer))


def _wrong_answers(problem: Problem) -> list[int]:
    gold = int(problem.answer)
    if problem.question.startswith("max "):
        # Unrelated numbers: demonstrations show the multi-turn format without showing how to use feedback.
        numbers = [int(x) for x in problem.question.split()[1:]]
        return [c for c in range(10 ** len(str(max(numbers)))) if c not in numbers]
    m = _MOD.search(problem.question)
    candidates = range(int(m.group(1))) if m else range(gold - 9, gold + 10)
    return [c for c in candidates if c != gold]


def demonstrations(
    problems: Sequence[Problem],
    seed: int = 0,
    *,
    max_wrong_turns: int = 0,
    feedback: str = DEFAULT_FEEDBACK,
    system_prompt: str | None = None,
) -> list[list[dict[str, str]]]:
    """Chat transcripts ending in the correct answer, for training the reference policy by SFT.

    With `max_wrong_turns > 0`, each transcript first shows 0..max_wrong_turns distinct wrong answers
    (uniform over the other residues), each followed by the feedback, so the policy has seen the
    multi-turn format; note this also teaches it not to repeat itself, which shrinks what DRIFT can add.
    """
    rng = np.random.default_rng(seed)
    out = []
    for problem in problems:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        messages.append({"role": "user", "content": prompt(problem)})
        wrong = _wrong_answers(problem)
        k = int(rng.integers(0, min(max_wrong_turns, len(wrong)) + 1)) if max_wrong_turns else 0
        for w in rng.choice(wrong, size=k, replace=False) if k else []:
            messages += [
                {"role": "assistant", "content": f"<answer>{w}</answer>"},
                {"role": "user", "content": feedback},
            ]
        messages.append({"role": "assistant", "content": f"<answer>{problem.answer}</answer>"})
        out.append(messages)
    return out
