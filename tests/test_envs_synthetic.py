"""The synthetic task: seeded problems, disjoint train/dev/test splits, knobs, verifier, demonstrations, token lengths."""

import collections

import pytest

from drift_jax.envs import SYNTHETIC_TOKENIZER, ChatFormat, Env
from drift_jax.envs.synthetic import demonstrations, extract_integer, make_problems, split_of, verify


def test_deterministic_from_seed():
    assert make_problems("train", 50, seed=3) == make_problems("train", 50, seed=3)
    assert make_problems("train", 50, seed=3) != make_problems("train", 50, seed=4)


def test_golden_problem():
    # If this changes, every synthetic prompt id in stored rollouts changes. Only change it on purpose.
    p = make_problems("train", 1, seed=0)[0]
    assert (p.question, p.answer, p.id) == ("85+63 mod 5", "3", "c567fa03b2fb5e77")


@pytest.mark.parametrize("knobs", [{}, {"num_operands": 4, "ops": ("max",), "modulus": None}])
def test_train_dev_test_are_disjoint_for_every_seed(knobs):
    split = {name: {p.question for s in range(3) for p in make_problems(name, n, seed=s, **knobs)}
             for name, n in (("train", 800), ("dev", 100), ("test", 200))}
    assert not split["train"] & split["dev"] and not split["train"] & split["test"] and not split["dev"] & split["test"]
    assert all(split_of(q) == name for name, questions in split.items() for q in questions)


def test_split_fractions_of_the_question_space():
    """With one digit and two operands every one of the 100 sums is a question: the hash puts ~20% in
    test, ~10% in dev, the rest in train, and the three lists cover the space exactly."""
    questions = [f"{a}+{b} mod 5" for a in range(10) for b in range(10)]
    counts = collections.Counter(split_of(q) for q in questions)
    assert counts == {"train": 67, "test": 24, "dev": 9}  # golden: a question's split never moves
    found = {n: make_problems(n, c, seed=0, max_digits=1) for n, c in counts.items()}
    assert sorted(p.question for ps in found.values() for p in ps) == sorted(questions)


def test_golden_dev_problems():
    # If this changes, tuned values chosen on dev were chosen on other problems. Only change it on purpose.
    assert [p.question for p in make_problems("dev", 3, seed=0)] == ["97+8 mod 5", "95+11 mod 5", "29+7 mod 5"]
    assert make_problems("dev", 40, seed=2) == make_problems("dev", 40, seed=2)


def test_answers_are_right_and_spread_over_the_residues():
    problems = make_problems("train", 700, seed=0)
    for p in problems[:50]:
        expr, mod = p.question.split(" mod ")
        assert int(p.answer) == eval(expr) % int(mod)
    counts = collections.Counter(p.answer for p in problems)
    assert set(counts) == {str(i) for i in range(5)} and min(counts.values()) > 100


def test_difficulty_knobs():
    ps = make_problems("train", 30, seed=0, num_operands=3, max_digits=3, modulus=None, ops=("+", "-", "*"))
    for p in ps:
        assert int(p.answer) == eval(p.question)
        assert sum(p.question.count(o) for o in "+-*") >= 2
    assert all(p.question.endswith(" mod 7") for p in make_problems("test", 5, modulus=7))


def test_too_many_problems_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct"):
        make_problems("test", 500, max_digits=1)  # only 100 questions exist, ~20 of them in test
    with pytest.raises(ValueError, match="split"):
        make_problems("valid", 5)
    with pytest.raises(ValueError, match="train split left"):
        make_problems("train", 5, test_fraction=0.5, dev_fraction=0.5)


def test_verifier():
    p = make_problems("test", 1)[0]
    assert verify(p, f"<answer>{p.answer}</answer>").correct
    assert verify(p, f"<answer> {p.answer} </answer>").correct
    v = verify(p, f"<answer>{(int(p.answer) + 1) % 5}</answer>")
    assert v.format_ok and not v.correct
    assert extract_integer("<answer>x</answer>") is None
    assert extract_integer("<answer>1</answer><answer>2</answer>") is None
    assert extract_integer("no tags 3") is None


def test_demonstrations_use_the_env_template_and_end_correct():
    problems = make_problems("train", 20)
    env = Env()
    for p, demo in zip(problems, demonstrations(problems)):
        assert demo[:-1] == env.reset([p])[0]
        assert verify(p, demo[-1]["content"]).correct


def test_multi_turn_demonstrations_show_distinct_wrong_answers_then_the_right_one():
    problems = make_problems("train", 50)
    demos = demonstrations(problems, seed=1, max_wrong_turns=3, feedback="Nope.")
    assert demos == demonstrations(problems, seed=1, max_wrong_turns=3, feedback="Nope.")
    lengths = collections.Counter(len(d) for d in demos)
    assert set(lengths) <= {2, 4, 6, 8} and len(lengths) > 1
    for p, demo in zip(problems, demos):
        answers = [verify(p, m["content"]) for m in demo if m["role"] == "assistant"]
        assert [a.correct for a in answers] == [False] * (len(answers) - 1) + [True]
        assert len({a.parsed_answer for a in answers}) == len(answers)
        assert all(m["content"] == "Nope." for m in demo[2::2])


def test_sequences_are_short_for_a_tiny_model():
    chat = ChatFormat.from_pretrained(SYNTHETIC_TOKENIZER)
    p = make_problems("train", 1, max_digits=3, num_operands=3)[0]
    demo = demonstrations([p])[0]
    prompt = chat.prompt_ids(demo[:1])
    answer = chat.encode(demo[1]["content"])
    assert len(prompt) + len(answer) + 1 < 40
    assert chat.tokenizer.get_vocab_size() <= 512


def test_max_problems():
    probs = make_problems("train", 50, seed=3, num_operands=3, ops=("max",))
    assert probs == make_problems("train", 50, seed=3, num_operands=3, ops=("max",))
    for p in probs:
        words = p.question.split()
        assert words[0] == "max" and len(words) == 4 and int(p.answer) == max(map(int, words[1:]))
    test = make_problems("test", 50, seed=3, num_operands=3, ops=("max",))
    assert not {p.question for p in probs} & {p.question for p in test}


def test_max_demonstrations_show_unrelated_wrong_numbers():
    """Wrong attempts in max demonstrations are never numbers of the list: the demos teach the
    multi-turn format, not how to use the feedback (that is left for DRIFT to learn)."""
    probs = make_problems("train", 40, seed=1, num_operands=3, ops=("max",))
    for p, demo in zip(probs, demonstrations(probs, seed=0, max_wrong_turns=2)):
        numbers = {int(x) for x in p.question.split()[1:]}
        answers = [int(m["content"][8:-9]) for m in demo if m["role"] == "assistant"]
        assert answers[-1] == int(p.answer)
        assert not set(answers[:-1]) & numbers and len(set(answers[:-1])) == len(answers) - 1
