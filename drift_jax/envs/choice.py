"""Multiple choice (GPQA, MMLU-Pro, MMLU-Redux): deterministic option shuffling, robust letter extraction."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from drift_jax.envs.math_task import boxed_contents
from drift_jax.envs.records import ANSWER_TAG, Problem, Verdict, content_id

LETTERS = "ABCDEFGHIJKLMNOP"
INSTRUCTION = "Answer with the letter of the correct option inside <answer></answer>."



def choice_problem(
    question: str, options: Sequence[str], gold_index: int, source: str = "", shuffle: bool = True
) -> Problem:
    """A problem whose id depends on the content only (not the given option order), options shuffled by it."""
    options = [str(o).strip() for o in options]
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"need 2 to {len(LETTERS)} options, got {len(options)}")
    if not 0 <= gold_index < len(options):
        raise ValueError(f"gold index {gold_index} out of range for {len(options)} options")
    gold = options[gold_index]
    pid = content_id("choice", question.strip(), sorted(options), gold)
    order = list(range(len(options)))
    if shuffle:  # a permutation from hashes, not from `random`, so it is the same on every Python
        order.sort(key=lambda i: (hashlib.sha256(f"{pid}:{options[i]}".encode()).hexdigest(), i))
    shuffled = tuple(options[i] for i in order)
    return Problem(
        id=pid,
        task="choice",
        question=question.strip(),
        answer=LETTERS[order.index(gold_index)],
        options=shuffled,
        source=source,
    )


def prompt(problem: Problem) -> str:
    lines = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(problem.options))
    return f"{problem.question}\n\n{lines}\n\n{INSTRUCTION}"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip(".").strip().lower()


def letter_of(content: str, options: Sequence[str]) -> str | None:
    """The option letter meant by an answer's content ("C", "(c)", "C) Paris", "Option C", "Paris")."""
    valid = LETTERS[: len(options)]
    text = re.sub(r"\\text(?:bf)?\{(.*?)\}", r"\1", content).replace("$", "").strip()
    text = re.sub(r"\*\*|__", "", text).strip()
    prefix = r"(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is\s*)?:?\s*)?"
    patterns = [
        (r"\(?([A-Za-z])\)?[.:)]?", 0),  # the letter alone
        (prefix + r"\(?([A-Z])\)?[.:)]?", re.IGNORECASE),  # "Option C", "The answer is (C)."
        (r"(?:\(([A-Z])\)|([A-Z])(?:[.:)]|\s+[-:]))\s.*", re.DOTALL),  # "C) Paris", "(C) Paris"
    ]
    for pattern, flags in patterns:
        m = re.fullmatch(pattern, text, flags=flags)
        letter = m and next(g for g in m.groups() if g).upper()
        if letter and letter in valid:
            return letter
    by_text = [LETTERS[i] for i, o in enumerate(options) if _norm(o) == _norm(text)]
    if len(by_text) == 1:
        return by_text[0]
    for pattern in (r"\(([A-Z])\)", r"(?<![A-Za-z])([A-Z])(?![A-Za-z])(?<![AI](?= (?!or |and )[a-z]))"):
        found = {x for x in re.findall(pattern, text) if x in valid}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None  # "A or B" names no single option
    return None


def extract_letter(response: str, options: Sequence[str]) -> str | None:
    """The letter of a response, from `<answer>` blocks (else `\\boxed{}`); None if absent or ambiguous."""
    contents = ANSWER_TAG.findall(response) or boxed_contents(response)
    letters = {letter_of(c, options) for c in contents}
    return letters.pop() if len(letters) == 1 else None


def verify(problem: Problem, response: str) -> Verdict:
    letter = extract_letter(response, problem.options)
    return Verdict(letter, letter is not None, letter == problem.answer)
