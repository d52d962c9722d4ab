"""The batched, host-side multi-turn environment and the ONE prompt template shared by rollouts and eval.

reset(problems) gives each episode's first messages; step(responses) verifies one response per active
row and gives the verdict, the reward and the feedback. An episode ends at its first correct answer or
after `max_turns`. Every turn is recorded, so returns (issue 6) can be computed from the episodes.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

from drift_jax.envs import choice, math_task, synthetic
from drift_jax.envs.records import DEFAULT_FEEDBACK, Episode, Problem, StepResult, Turn, Verdict

TASKS: dict[str, types.ModuleType] = {"synthetic": synthetic, "math": math_task, "choice": choice}


def _task(problem: Problem) -> types.ModuleType:
    if problem.task not in TASKS:
        raise ValueError(
            f"problem {problem.id}: unknown task {problem.task!r}, expected one of {sorted(TASKS)}"
        )
    return TASKS[problem.task]


def user_prompt(problem: Problem) -> str:
    """The first user message of a problem: the question and how to format the answer."""
    return _task(problem).prompt(problem)


def first_messages(problem: Problem, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat that opens an episode; rollouts and evaluation both start here."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return system + [{"role": "user", "content": user_prompt(problem)}]


def verify(problem: Problem, response: str) -> Verdict:
    """Parsed answer, format flag and correctness of one response."""
    return _task(problem).verify(problem, response)


class Env:
    """A batch of episodes. Not thread-safe; one per rollout batch."""

    def __init__(
        self, max_turns: int = 5, feedback: str = DEFAULT_FEEDBACK, system_prompt: str | None = None
    ):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns
        self.feedback = feedback
        self.system_prompt = system_prompt
        self.episodes: list[Episode] = []

    def reset(self, problems: Sequence[Problem]) -> list[list[dict[str, str]]]:
        """Starts one episode per problem; returns their first messages (row i is problems[i])."""
        self.episodes = [Episode(p, first_messages(p, self.system_prompt)) for p in problems]
        return [list(e.messages) for e in self.episodes]

    @property
    def active(self) -> list[int]:
        """Rows whose episode is not done, in order; `step` takes one response for each."""
        return [i for i, e in enumerate(self.episodes) if not e.done]

    @property
    def done(self) -> bool:
        return all(e.done for e in self.episodes)

    def messages(self, row: int) -> list[dict[str, str]]:
        """The whole chat of a row so far, ending with the feedback if the episode goes on."""
        return list(self.episodes[row].messages)

    def step(self, responses: Sequence[str]) -> list[StepResult]:
        """Verifies one response per active row (in the order of `active`) and advances those episodes."""
        rows = self.active
        if len(responses) != len(rows):
            raise ValueError(f"{len(responses)} responses for {len(rows)} active episodes")
        results = []
        for row, response in zip(rows, responses):
            episode = self.episodes[row]
            verdict = verify(episode.problem, response)
            reward = 1.0 if verdict.correct else 0.0
            episode.turns.append(Turn(response, verdict.parsed_answer, verdict.format_ok, reward))
            episode.messages.append({"role": "assistant", "content": response})
            episode.done = verdict.correct or len(episode.turns) >= self.max_turns
            feedback = None if episode.done else self.feedback
            if feedback is not None:
                episode.messages.append({"role": "user", "content": feedback})
            results.append(
                StepResult(row, verdict.parsed_answer, verdict.format_ok, reward, episode.done, feedback)
            )
        return results
