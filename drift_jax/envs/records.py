"""Records shared by every task: the problem, one turn of an episode, the episode, and the step result."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

# The one answer format of every task: the contents of each `<answer>...</answer>` block.
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One task instance. `id` is a hash of the content, so it is stable across runs and machines.

    For multiple choice, `options` are already shuffled and `answer` is the gold letter.
    """

    id: str
    task: str  # "synthetic", "math" or "choice": selects the prompt and the verifier
    question: str
    answer: str  # gold: an expression for math and synthetic, a letter for multiple choice
    options: tuple[str, ...] = ()
    source: str = ""  # the dataset format the problem came from, e.g. "gsm8k"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "options": list(self.options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Problem:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "options" else v) for k, v in d.items() if k in fields})


def content_id(*parts: Any) -> str:
    """A 16-hex-digit sha256 of JSON-serialised parts: equal content, equal id, on any machine."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a verifier says about one response."""

    parsed_answer: str | None  # None when no answer could be parsed
    format_ok: bool
    correct: bool


@dataclasses.dataclass(frozen=True)
class Turn:
    """One assistant turn as recorded by the environment."""

    response: str
    parsed_answer: str | None
    format_ok: bool
    reward: float  # 1.0 for a correct answer, else 0.0


@dataclasses.dataclass
class Episode:
    """Everything that happened to one problem: the messages seen and every turn."""

    problem: Problem
    messages: list[dict[str, str]]
    turns: list[Turn] = dataclasses.field(default_factory=list)
    done: bool = False

    @property
    def solved(self) -> bool:
        return any(t.reward > 0 for t in self.turns)

    @property
    def first_correct_turn(self) -> int | None:
        """1-based turn of the first correct answer, None if never solved."""
        return next((i + 1 for i, t in enumerate(self.turns) if t.reward > 0), None)


@dataclasses.dataclass(frozen=True)
class StepResult:
    """Per active row: the verdict on its response, and the feedback to show if it goes on."""

    row: int  # index of the episode in the batch given to reset
    parsed_answer: str | None
    format_ok: bool
    reward: float
    done: bool
    feedback: str | None  # the next user message; None when the episode is done


DEFAULT_FEEDBACK = "Incorrect. Please think again."  # the paper's feedback message


DEV_FRACTION = 0.1  # of the training questions, held out for tuning (every task's dev split)


def hash_bucket(text: str) -> float:
    """A number in [0, 1) from a hash of `text` alone: which split a question belongs to, on any machine."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


def in_dev(question: str, dev_fraction: float = DEV_FRACTION) -> bool:
    """Whether a training question is held out as dev. The top of the hash range: carving dev left the
    test split (the bottom) and the first problems of every seeded train list unchanged."""
    return hash_bucket(question) >= 1.0 - dev_fraction
