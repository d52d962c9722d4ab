"""Chat formatting through a HF tokenizer directory: its chat template rendered as transformers does.

The same object serves rollouts and evaluation, so both see the same tokens. `feedback_ids` is derived by
rendering the template, never hard-coded, so a Qwen, Llama or the synthetic tokenizer all work.
"""

from __future__ import annotations

import datetime
import functools
import json
import pathlib
from collections.abc import Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers

Messages = Sequence[dict[str, str]]

SYNTHETIC_TOKENIZER = pathlib.Path(__file__).resolve().parent.parent / "assets" / "synthetic_tokenizer"

_PING, _PONG = "Hello", "Hi there"  # placeholder turns used to locate the template's separators


def _token_str(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _compile(template: str) -> jinja2.Template:
    """The chat template compiled with the environment transformers uses."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: object,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators=None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


class ChatFormat:
    """A tokenizer plus its chat template. Build with `ChatFormat.from_pretrained(tokenizer_dir)`."""

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, chat_template: str, special_tokens: dict[str, str | None]
    ):
        self.tokenizer = tokenizer
        self._template = _compile(chat_template)
        self._special = {k: v for k, v in special_tokens.items() if v is not None}
        eos = self._special.get("eos_token")
        if eos is None or tokenizer.token_to_id(eos) is None:
            raise ValueError(f"eos token {eos!r} is not in the vocabulary")
        self.eos_id: int = tokenizer.token_to_id(eos)
        pad = self._special.get("pad_token")
        self.pad_id: int = (
            tokenizer.token_to_id(pad) if pad and tokenizer.token_to_id(pad) is not None else self.eos_id
        )
        self.end_of_turn_id, self._end_of_turn = self._find_end_of_turn()
        self.stop_token_ids: tuple[int, ...] = tuple(dict.fromkeys([self.end_of_turn_id, self.eos_id]))

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path) -> ChatFormat:
        """Reads tokenizer.json and the chat template (tokenizer_config.json or chat_template.jinja)."""
        path = pathlib.Path(path)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} not found: a HF tokenizer directory needs {name}")
        config = json.loads((path / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates, as some repos ship them
            template = {t["name"]: t["template"] for t in template}.get("default")
        if not template:
            raise ValueError(f"no chat template in {path}/tokenizer_config.json or chat_template.jinja")
        special = {k: _token_str(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return cls(tokenizers.Tokenizer.from_file(str(path / "tokenizer.json")), template, special)

    def render(self, messages: Messages, add_generation_prompt: bool = False) -> str:
        return self._template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **self._special
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of text; special tokens in the text are recognised, none are added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The conversation so far, ending with the opening of an assistant turn."""
        return self.encode(self.render(messages, add_generation_prompt=True))

    def _find_end_of_turn(self) -> tuple[int, str]:
        head = self.render([{"role": "user", "content": _PING}], add_generation_prompt=True)
        if head == self.render([{"role": "user", "content": _PING}]):
            raise ValueError("chat template has no generation prompt (add_generation_prompt changes nothing), so "
                             "no assistant turn can be opened for the model to answer in")
        full = self.render([{"role": "user", "content": _PING}, {"role": "assistant", "content": _PONG}])
        if not full.startswith(head + _PONG):
            raise ValueError("chat template: the generation prompt is not a prefix of the rendered reply")
        tail = full[len(head + _PONG) :]
        ids = self.encode(tail)
        if (
            not ids
            or self.tokenizer.id_to_token(ids[0]) is None
            or not tail.startswith(self.tokenizer.id_to_token(ids[0]))
        ):
            raise ValueError(f"chat template: no end-of-turn token after an assistant reply (tail {tail!r})")
        return ids[0], self.tokenizer.id_to_token(ids[0])

    def feedback_ids(self, feedback: str) -> list[int]:
        """Tokens to append right after the model's end-of-turn token: the user's feedback turn, then the
        opening of the next assistant turn."""
        return list(self._feedback_ids(feedback))

    @functools.lru_cache(maxsize=64)
    def _feedback_ids(self, feedback: str) -> tuple[int, ...]:
        user = [{"role": "user", "content": _PING}]
        before = self.render(user, add_generation_prompt=True) + _PONG + self._end_of_turn
        after = self.render(
            user + [{"role": "assistant", "content": _PONG}, {"role": "user", "content": feedback}],
            add_generation_prompt=True,
        )
        if not after.startswith(before):
            raise ValueError("chat template: a later turn re-renders earlier ones, cannot append feedback")
        return tuple(self.encode(after[len(before) :]))
