"""Chat formatting: template rendering as transformers does it, and the token-level append invariant."""

import json

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from drift_jax.envs import SYNTHETIC_TOKENIZER, ChatFormat, synthetic

# Qwen2.5-Instruct's chat template (tool branches included), as shipped in its tokenizer_config.json.
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are '
    'provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    '    {%- for tool in tools %}\n        {{- "\\n" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n'
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n{%- else %}\n'
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n            {{- tool_call.name }}\n'
    '            {{- \'", "arguments": \' }}\n            {{- tool_call.arguments | tojson }}\n'
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "What is 12+30? Please reason step by step, and put your final answer within \\boxed{}.",
    "Incorrect. Please think again.",
    "The answer is \\boxed{42}.",
    "You are a helpful assistant.",
] * 5


def _write_tokenizer(path, special, template, eos, pad, bos=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=special,
            show_progress=False,
        ),
    )
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    config = {
        "chat_template": template,
        "eos_token": eos,
        "pad_token": pad,
        "bos_token": bos,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return _write_tokenizer(
        tmp_path_factory.mktemp("qwen") / "tok",
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        QWEN25_TEMPLATE,
        eos="<|im_end|>",
        pad="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    special = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    return _write_tokenizer(
        tmp_path_factory.mktemp("llama") / "tok",
        special,
        LLAMA3_TEMPLATE,
        eos="<|end_of_text|>",
        pad=None,
        bos={"__type": "AddedToken", "content": "<|begin_of_text|>"},
    )  # older config form


CHATS = [
    [{"role": "user", "content": "What is 12+30?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Half of 1?\nUse \\boxed{}."}],
]
RESPONSES = ["The answer is \\boxed{42}.", "<answer>7</answer>", "Let me think:\n\n12 + 30 = 42, so 42."]


@pytest.mark.parametrize("which", ["synthetic", "qwen", "llama"])
def test_prompt_response_feedback_tokens_equal_the_rendered_chat(which, qwen_dir, llama_dir):
    chat = ChatFormat.from_pretrained(
        {"synthetic": SYNTHETIC_TOKENIZER, "qwen": qwen_dir, "llama": llama_dir}[which]
    )
    for messages in CHATS:
        for response in RESPONSES:
            for feedback in ["Incorrect. Please think again.", "Nope, try once more!"]:
                ids = (
                    chat.prompt_ids(messages)
                    + chat.encode(response)
                    + [chat.end_of_turn_id]
                    + chat.feedback_ids(feedback)
                )
                longer = messages + [
                    {"role": "assistant", "content": response},
                    {"role": "user", "content": feedback},
                ]
                assert ids == chat.prompt_ids(longer)
                # and once more: the invariant composes over turns
                ids2 = ids + chat.encode(response) + [chat.end_of_turn_id] + chat.feedback_ids(feedback)
                assert ids2 == chat.prompt_ids(longer + longer[-2:])


def test_qwen_feedback_and_stop_tokens(qwen_dir):
    chat = ChatFormat.from_pretrained(qwen_dir)
    fb = "Incorrect. Please think again."
    assert chat.feedback_ids(fb) == chat.encode(
        f"\n<|im_start|>user\n{fb}<|im_end|>\n<|im_start|>assistant\n"
    )
    im_end, eot = chat.tokenizer.token_to_id("<|im_end|>"), chat.tokenizer.token_to_id("<|endoftext|>")
    assert chat.end_of_turn_id == chat.eos_id == im_end and chat.stop_token_ids == (im_end,)
    assert chat.pad_id == eot
    text = chat.decode(chat.prompt_ids(CHATS[0]))
    assert (
        text == "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\nuser\n"
        "What is 12+30?\nassistant\n"
    )


def test_llama_stop_tokens_include_end_of_turn_and_eos(llama_dir):
    chat = ChatFormat.from_pretrained(llama_dir)
    t = chat.tokenizer.token_to_id
    assert chat.stop_token_ids == (t("<|eot_id|>"), t("<|end_of_text|>"))
    assert chat.pad_id == chat.eos_id  # no pad token: fall back to eos
    assert chat.prompt_ids(CHATS[0])[0] == t("<|begin_of_text|>")


@pytest.mark.parametrize("which", ["synthetic", "qwen"])
def test_rendering_matches_transformers(which, qwen_dir):
    transformers = pytest.importorskip("transformers")
    path = SYNTHETIC_TOKENIZER if which == "synthetic" else qwen_dir
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    chat = ChatFormat.from_pretrained(path)
    for messages in CHATS:
        longer = messages + [{"role": "assistant", "content": RESPONSES[0]}]
        for gen in (True, False):
            assert chat.render(longer, gen) == hf.apply_chat_template(
                longer, tokenize=False, add_generation_prompt=gen
            )
        assert chat.prompt_ids(messages) == list(
            hf(
                hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False,
            )["input_ids"]
        )


def test_synthetic_tokenizer_round_trips_any_text():
    chat = ChatFormat.from_pretrained(SYNTHETIC_TOKENIZER)
    p = synthetic.make_problems("train", 1)[0]
    assert chat.decode(chat.encode(f"<answer>{p.answer}</answer>")) == f"<answer>{p.answer}</answer>"
    odd = "Falsch! Réessaie 🙂"
    assert chat.decode(chat.encode(odd)) == odd  # byte-level: a custom feedback text is never lost
    assert chat.tokenizer.token_to_id("<answer>") is not None  # one token each, so answers stay short
    assert chat.stop_token_ids == (chat.tokenizer.token_to_id("<|im_end|>"),)


def test_template_that_rewrites_history_is_refused(tmp_path):
    rewrite = (
        "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<|im_start|>assistant\n..."
        "<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    path = _write_tokenizer(
        tmp_path / "tok", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], rewrite, eos="<|im_end|>", pad=None
    )
    chat = ChatFormat.from_pretrained(path)
    with pytest.raises(ValueError, match="re-renders"):
        chat.feedback_ids("Incorrect.")


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        ChatFormat.from_pretrained(tmp_path)
