"""Multiple choice: deterministic shuffling, content ids, robust letter extraction."""

import pytest

from drift_jax.envs.choice import choice_problem, extract_letter, letter_of, prompt, verify

OPTIONS = ["Paris", "Rome", "Berlin", "Madrid"]


def test_shuffle_is_deterministic_and_keeps_the_gold_option():
    a = choice_problem("Capital of France?", OPTIONS, 0, "gpqa")
    b = choice_problem("Capital of France?", OPTIONS, 0, "gpqa")
    assert a == b
    assert sorted(a.options) == sorted(OPTIONS)
    assert a.options["ABCD".index(a.answer)] == "Paris"


def test_id_and_order_do_not_depend_on_the_given_option_order():
    a = choice_problem("Capital of France?", OPTIONS, 0)
    b = choice_problem("Capital of France?", list(reversed(OPTIONS)), 3)
    assert a.id == b.id and a.options == b.options and a.answer == b.answer


def test_id_is_stable_across_runs_and_machines():
    # A golden value: if it changes, every stored rollout's prompt id changes. Only change it on purpose.
    assert choice_problem("Capital of France?", OPTIONS, 0).id == "21657f4dc719d74c"


def test_shuffling_varies_across_questions():
    golds = {choice_problem(f"Question {i}?", OPTIONS, 0).answer for i in range(40)}
    assert golds == set("ABCD")  # GPQA always lists the correct answer first; the shuffle must move it


def test_no_shuffle_keeps_order():
    p = choice_problem("Q?", OPTIONS, 2, shuffle=False)
    assert p.options == tuple(OPTIONS) and p.answer == "C"


@pytest.mark.parametrize("bad", [dict(options=["only"], gold_index=0), dict(options=OPTIONS, gold_index=4)])
def test_bad_problem(bad):
    with pytest.raises(ValueError):
        choice_problem("Q?", **bad)


@pytest.mark.parametrize(
    "content,letter",
    [
        ("B", "B"),
        ("(b)", "B"),
        ("b", "B"),
        ("C)", "C"),
        ("D.", "D"),
        ("C) Berlin", "C"),
        ("(C) Berlin", "C"),
        ("B. Rome", "B"),
        ("A: Paris", "A"),
        ("D - Madrid", "D"),
        ("Option D", "D"),
        ("The answer is (A).", "A"),
        ("answer: c", "C"),
        ("**B**", "B"),
        ("\\text{(C)}", "C"),
        ("Rome", "B"),
        ("rome.", "B"),
        ("I think it is B", "B"),
        ("A or B", None),
        ("B and C", None),
        ("E", None),
        ("", None),
        ("Lyon", None),
    ],
)
def test_letter_of(content, letter):
    assert letter_of(content, OPTIONS) == letter


def test_extract_letter_needs_tags_or_box_and_one_letter():
    assert extract_letter("reasoning... <answer>C</answer>", OPTIONS) == "C"
    assert extract_letter("\\boxed{D}", OPTIONS) == "D"
    assert extract_letter("The answer is C", OPTIONS) is None
    assert extract_letter("<answer>A</answer> no, <answer>B</answer>", OPTIONS) is None
    assert extract_letter("<answer>A</answer> yes <answer>(A)</answer>", OPTIONS) == "A"
    # more options than four: letters up to J are valid
    assert extract_letter("<answer>J</answer>", [str(i) for i in range(10)]) == "J"


def test_prompt_and_verify():
    p = choice_problem("Capital of France?", OPTIONS, 0)
    text = prompt(p)
    assert text.startswith("Capital of France?\n\nA) ") and "<answer></answer>" in text
    assert all(f"{letter}) {o}" in text for letter, o in zip("ABCD", p.options))
    v = verify(p, f"<answer>{p.answer}</answer>")
    assert v.correct and v.format_ok and v.parsed_answer == p.answer
    wrong = next(x for x in "ABCD" if x != p.answer)
    v = verify(p, f"<answer>{wrong}</answer>")
    assert not v.correct and v.format_ok
    assert not verify(p, "no idea").format_ok
