"""The files a run reads, checked without loading weights: model and tokenizer directories, task files.

Each check returns what it read (or None) and the problems it found, one line each; `validate.py` runs
them for a run's config and for `python -m drift_jax.evaluate`'s flags. A chat template must render a
generation prompt; task files are parsed; `longest_prompt` tokenises their prompts with the one template.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from drift_jax import envs
from drift_jax.lm import hf


def chat_problems(path: str, what: str) -> tuple[envs.ChatFormat | None, list[str]]:
    """The tokenizer directory's ChatFormat, or why it cannot be used."""
    if not os.path.isdir(path):
        return None, [f"{what}: {path} is not a directory"]
    missing = [n for n in ("tokenizer.json", "tokenizer_config.json") if not os.path.isfile(os.path.join(path, n))]
    if missing:
        return None, [f"{what}: {path} lacks {', '.join(missing)} (a HF tokenizer directory needs them)"]
    try:
        return envs.ChatFormat.from_pretrained(path), []
    except Exception as e:  # noqa: BLE001 - any failure to build the chat format is the user's file
        return None, [f"{what}: {path}: {type(e).__name__}: {e}"]


def policy_problems(path: str, what: str) -> tuple[int | None, list[str]]:
    """(max_position_embeddings, problems) of a HF model directory, without reading its weights."""
    if not path or not os.path.isdir(path):
        return None, [f"{what}: {path!r} is not a directory (a local HF model directory is expected)"]
    out, positions = [], None
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        out.append(f"{what}: {path} has no config.json")
    else:
        try:
            positions = hf.read_config(path).max_position_embeddings
        except (ValueError, KeyError, TypeError) as e:
            out.append(f"{what}: {config}: {type(e).__name__}: {e}")
    if not any(os.path.isfile(os.path.join(path, n)) for n in ("model.safetensors", "model.safetensors.index.json")):
        out.append(f"{what}: {path} has neither model.safetensors nor model.safetensors.index.json")
    return positions, out


def task_problems(task: Mapping[str, Any], split: str, n: int, seed: int, what: str
                  ) -> tuple[list[envs.Problem] | None, list[str]]:
    """The problems a stage will use (file tasks: parsed from the local files, in file order), or why not."""
    name = task.get("name")
    if name == "synthetic":
        knobs = dict(task.get("knobs") or {})
        if "modulus" in knobs:
            knobs["modulus"] = knobs["modulus"] or None  # 0 in a config: no modulus
        try:
            return envs.synthetic.make_problems(split, n, seed=seed, **knobs), []
        except (ValueError, TypeError) as e:
            return None, [f"{what}: synthetic task: {e}"]
    if name not in envs.files.FORMATS:
        return None, [f"{what}: unknown task {name!r}; known: synthetic, {', '.join(sorted(envs.files.FORMATS))}"]
    if split not in envs.files.FORMATS[name][1]:
        return None, [f"{what}: task {name} has no split {split!r} (it has {envs.files.FORMATS[name][1]})"]
    if not task.get("manual_dir"):
        return None, [f"{what}: task {name} reads local files: set its manual_dir (<manual_dir>/{name}/{split}*.jsonl)"]
    try:
        found = envs.files.load_local(task["manual_dir"], name, split)
    except (OSError, ValueError) as e:  # missing, malformed (file, line, field) or empty
        return None, [f"{what}: {e}"]
    return (found[:n] if n else found), []


def longest_prompt(chat: envs.ChatFormat, problems: Sequence[envs.Problem]) -> tuple[int, str]:
    """(tokens, problem id) of the longest first prompt, rendered with the one template."""
    texts = [chat.render(envs.first_messages(p), add_generation_prompt=True) for p in problems]
    lengths = [len(e.ids) for e in chat.tokenizer.encode_batch(texts, add_special_tokens=False)]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    return lengths[i], problems[i].id
