"""Multi-turn feedback environments: tasks, verifiers, the prompt template, chat formatting, task datasets.

Data flow: problems (synthetic, or local files through TFDS builders) -> `Env.reset` gives the first
messages (the ONE prompt template) -> `ChatFormat` turns them into tokens -> the sampler answers ->
`Env.step` verifies, records the turn and gives the feedback -> `ChatFormat.feedback_ids` opens the
next assistant turn.
"""

from drift_jax.envs import builders, choice, files, math_task, synthetic
from drift_jax.envs.base import TASKS, Env, first_messages, user_prompt, verify
from drift_jax.envs.builders import load_problems
from drift_jax.envs.chat import SYNTHETIC_TOKENIZER, ChatFormat
from drift_jax.envs.choice import choice_problem, extract_letter
from drift_jax.envs.files import MalformedRowError, load_local
from drift_jax.envs.math_task import answers_equal, check_math, extract_math_answer, normalize_answer
from drift_jax.envs.records import DEFAULT_FEEDBACK, Episode, Problem, StepResult, Turn, Verdict, content_id

__all__ = [
    "DEFAULT_FEEDBACK",
    "SYNTHETIC_TOKENIZER",
    "TASKS",
    "ChatFormat",
    "Env",
    "Episode",
    "MalformedRowError",
    "Problem",
    "StepResult",
    "Turn",
    "Verdict",
    "answers_equal",
    "builders",
    "check_math",
    "choice",
    "choice_problem",
    "content_id",
    "extract_letter",
    "extract_math_answer",
    "files",
    "first_messages",
    "load_local",
    "load_problems",
    "math_task",
    "normalize_answer",
    "synthetic",
    "user_prompt",
    "verify",
]
