"""Math answers: extraction from `<answer>` tags or `\\boxed{}`, and equivalence checked with math-verify."""

from __future__ import annotations

import fractions
import functools
import re
import threading

import math_verify
from math_verify import LatexExtractionConfig

from drift_jax.envs.records import ANSWER_TAG, Problem, Verdict

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")  # a word that is not a LaTeX command
_BOXED_ONLY = [LatexExtractionConfig(boxed_match_priority=0)]


def prompt(problem: Problem) -> str:
    return f"{problem.question}\n{INSTRUCTION}"


def boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` (nested braces allowed) and `\\boxed 5`, in order."""
    out = []
    for m in _BOXED.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    out.append(text[i + 1 : j])
                    break
        elif m.group(0).endswith(" ") or m.group(0) == "\\boxed":
            word = re.match(r"[^\s$]+", text[i:])
            if word:
                out.append(word.group(0))
    return out


def _clean(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    answer = re.sub(r"^\$+|\$+$", "", answer).strip()
    answer = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", answer).strip()
    return answer.rstrip(".").strip()


def extract_answers(response: str) -> list[str]:
    """Every answer the response gives: `<answer>` blocks if any (their `\\boxed{}` if inside), else boxes."""
    tagged = ANSWER_TAG.findall(response)
    if tagged:
        found = []
        for content in tagged:
            boxes = boxed_contents(content)
            found.append(boxes[-1] if boxes else content)
    else:
        found = boxed_contents(response)
    return [_clean(a) for a in found]


def extract_math_answer(response: str) -> str | None:
    """The single answer of a response; None if there is none, it is empty, or two answers disagree.

    Giving two different answers is hedging, so it counts as no answer rather than the last one.
    """
    answers = extract_answers(response)
    if not answers or any(not a for a in answers):
        return None
    last = answers[-1]
    if any(normalize_answer(a) != normalize_answer(last) and not answers_equal(a, last) for a in answers):
        return None
    return last


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


_SCIENTIFIC = re.compile(r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)")
# Expressions sympy may take forever on (towers of powers, huge factorials); outside the main thread
# there is no timeout, so these are compared as strings.
_EXPLOSIVE = re.compile(r"\^\s*\{[^}]*\^|\^\s*\d+\s*\^|\d{4,}\s*!")


@functools.lru_cache(maxsize=65536)
def _parse(answer: str) -> tuple:
    """math-verify's parse of a bare answer; prose ("The answer is 5") falls back to a search."""
    if _EXPLOSIVE.search(answer):
        return ()
    answer = _SCIENTIFIC.fullmatch(answer) and _SCIENTIFIC.sub(r"\1 \\times 10^{\2}", answer) or answer
    words = _WORD.findall(re.sub(r"\\[a-zA-Z]+\s*(?:\{[^{}]*\})?", " ", answer))
    parsed = (
        []
        if len(words) >= 2
        else math_verify.parse("\\boxed{" + answer + "}", _BOXED_ONLY, parsing_timeout=_timeout())
    )
    if not any(not isinstance(p, str) for p in parsed):
        parsed = math_verify.parse(answer, parsing_timeout=_timeout()) or parsed
    return tuple(p for p in parsed if not isinstance(p, str))


def answers_equal(pred: str, gold: str) -> bool:
    """Mathematical equivalence of two bare answers; text answers ("no solution") compare normalised."""
    pred, gold = _clean(pred), _clean(gold)
    gold = (boxed_contents(gold) or [gold])[-1]
    if not pred or not gold:
        return False
    p, g = _parse(pred), _parse(gold)
    if not p or not g:  # text, or beyond sympy: the normalised strings must agree
        return normalize_answer(pred) == normalize_answer(gold)
    return bool(math_verify.verify(list(g), list(p), timeout_seconds=_timeout()))


def check_math(response: str, gold: str) -> bool:
    """Whether a whole model response (answer in `<answer>` tags or `\\boxed{}`) matches the gold answer."""
    pred = extract_math_answer(response)
    return pred is not None and answers_equal(pred, gold)


def verify(problem: Problem, response: str) -> Verdict:
    pred = extract_math_answer(response)
    return Verdict(pred, pred is not None, pred is not None and answers_equal(pred, problem.answer))


_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(\d+)\}$|^(-?\d+)/(\d+)$")


def normalize_answer(answer: str | None) -> str | None:
    """A canonical string for repeat detection: `0.5`, `1/2` and `\\dfrac{1}{2}` all give `1/2`."""
    if answer is None:
        return None
    a = _clean(answer)
    a = re.sub(r"\\(?:left|right|displaystyle|!|,|;|:)", "", a)
    a = re.sub(r"\\[dt]frac", r"\\frac", a)
    a = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", a)
    a = re.sub(r"\\text\{(.*?)\}", r"\1", a)
    a = re.sub(r"\s+", "", a).replace("{,}", "").lower()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", a):
        a = a.replace(",", "")
    m = _FRAC.match(a)
    try:
        if _NUMBER.match(a):
            return str(fractions.Fraction(a))
        if m and m.group(2):
            return str(fractions.Fraction(int(m.group(1) + m.group(2)), int(m.group(3))))
        if m:
            return str(fractions.Fraction(int(m.group(4)), int(m.group(5))))
    except ZeroDivisionError:
        pass
    return a
