"""Weighted SFT examples from multi-turn trajectories: token sequences, assistant-only loss masks, weights.

A trajectory's tokens are exactly what the sampler's cache held:
  prompt_ids + response_1 + end_of_turn + feedback_1 + response_2 + end_of_turn + ... + response_T + end_of_turn
where `feedback_t` are the chat-template tokens between one assistant turn and the next (user feedback
message and the next assistant header). `loss_mask[t] = 1` means token t is a target (predicted from
tokens[:t]); only assistant tokens (and their end-of-turn token) are ever targets.

Supervision:
  "terminal": only the last assistant turn (+ end of turn) is scored; everything before it, earlier
              wrong attempts and feedback included, is context (the DRIFT reference).
  "all":      every assistant turn is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from drift_jax.envs import ChatFormat

Supervision = Literal["terminal", "all"]


def trajectory_tokens(
    prompt_ids: Sequence[int],
    responses: Sequence[Sequence[int]],
    feedbacks: Sequence[Sequence[int]],
    end_of_turn: int,
    stop_tokens: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_T, turn_of_token_T): turn index (1-based) for assistant tokens, 0 for context tokens.

    A response that ends with `end_of_turn` or another of the sampler's `stop_tokens` (Llama-3's eos
    besides its end of turn) is kept as sampled; one that does not (cut at max_new_tokens) is closed
    with `end_of_turn`, as the episode loop closes it in the cache. `feedbacks[t]` follows response t;
    it has len(responses) - 1 entries (or len(responses), the last ignored).
    """
    if len(feedbacks) < len(responses) - 1:
        raise ValueError(f"{len(responses)} responses need {len(responses) - 1} feedback messages, got {len(feedbacks)}")
    tokens: list[int] = list(prompt_ids)
    turn: list[int] = [0] * len(prompt_ids)
    for t, response in enumerate(responses):
        response = list(response)
        if not is_closed(response, end_of_turn, stop_tokens):
            response.append(end_of_turn)
        tokens += response
        turn += [t + 1] * len(response)
        if t < len(responses) - 1:
            tokens += list(feedbacks[t])
            turn += [0] * len(feedbacks[t])
    return np.asarray(tokens, np.int32), np.asarray(turn, np.int32)


def is_closed(response: Sequence[int], end_of_turn: int, stop_tokens: Sequence[int] = ()) -> bool:
    """Whether the sampler ended this response itself (with a stop token) rather than at max_new_tokens."""
    return bool(response) and (response[-1] == end_of_turn or response[-1] in stop_tokens)


def loss_mask(turn_of_token_T: np.ndarray, supervision: Supervision = "terminal") -> np.ndarray:
    if supervision == "terminal":
        last = turn_of_token_T.max()
        return (turn_of_token_T == last) & (last > 0)
    if supervision == "all":
        return turn_of_token_T > 0
    raise ValueError(f"supervision must be 'terminal' or 'all', got {supervision!r}")


def make_example(
    trajectory: dict[str, Any],
    weight: float,
    *,
    end_of_turn: int,
    stop_tokens: Sequence[int] = (),
    supervision: Supervision = "terminal",
    max_length: int | None = None,
) -> dict[str, Any] | None:
    """One weighted example from a rollout record (see `driver.py`); None if it cannot fit max_length.

    A trajectory longer than `max_length` keeps its prompt (the question) and its scored turn, and loses
    earlier turns whole, oldest first, each with the feedback after it: under "terminal" supervision they
    are context only. Under "all" they are targets, so nothing is dropped and a trajectory that does not
    fit gives None, as does one whose prompt and last turn alone exceed max_length.
    """
    prompt = trajectory["prompt_ids"]
    responses = [t["response_ids"] for t in trajectory["turns"]]
    feedbacks = [t["feedback_ids"] for t in trajectory["turns"]]
    for first in range(len(responses) if supervision == "terminal" else 1):
        tokens, turn = trajectory_tokens(prompt, responses[first:], feedbacks[first:], end_of_turn, stop_tokens)
        if max_length is None or len(tokens) <= max_length:
            break
    else:
        return None
    mask = loss_mask(turn, supervision)
    return {
        "tokens": tokens,
        "loss_mask": mask.astype(np.int8),
        "weight": np.float32(weight),
        "group_id": trajectory["problem_id"],
        "example_id": f"{trajectory['problem_id']}/{trajectory['sample']}",
    }


def examples_from_messages(chat: ChatFormat, transcripts, max_length: int) -> list[dict[str, Any]]:
    """Demonstration chats -> weight-1 examples scoring the last assistant turn (earlier ones are context)."""
    fb_cache: dict[str, list[int]] = {}
    out = []
    for i, msgs in enumerate(transcripts):
        first_assistant = next(j for j, m in enumerate(msgs) if m["role"] == "assistant")
        responses, feedbacks = [], []
        for m in msgs[first_assistant:]:
            if m["role"] == "assistant":
                responses.append(chat.encode(m["content"]) + [chat.end_of_turn_id])
            else:
                feedbacks.append(fb_cache.setdefault(m["content"], chat.feedback_ids(m["content"])))
        record = {
            "problem_id": f"demo{i}", "sample": 0, "prompt_ids": chat.prompt_ids(msgs[:first_assistant]),
            "turns": [{"response_ids": r, "feedback_ids": f} for r, f in zip(responses, feedbacks + [[]])],
        }
        ex = make_example(record, 1.0, end_of_turn=chat.end_of_turn_id, max_length=max_length)
        if ex is not None:
            out.append(ex)
    return out
