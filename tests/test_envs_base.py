"""The batched environment: episodes end early and late, feedback text, turn records, the one template."""

import pytest

from drift_jax.envs import DEFAULT_FEEDBACK, Env, choice_problem, first_messages, synthetic
from drift_jax.envs.records import Problem


def _right(p):
    return f"<answer>{p.answer}</answer>"


def _wrong(p):
    return f"<answer>{(int(p.answer) + 1) % 5}</answer>"


def test_episodes_end_at_first_correct_answer_or_after_max_turns():
    problems = synthetic.make_problems("test", 3)
    env = Env(max_turns=3)
    first = env.reset(problems)
    assert first == [first_messages(p) for p in problems]
    # turn 1: row 0 right (ends early), rows 1 and 2 wrong
    results = env.step([_right(problems[0]), _wrong(problems[1]), _wrong(problems[2])])
    assert [(r.row, r.reward, r.done) for r in results] == [(0, 1.0, True), (1, 0.0, False), (2, 0.0, False)]
    assert results[0].feedback is None and results[1].feedback == DEFAULT_FEEDBACK
    assert env.active == [1, 2]
    # turn 2: row 1 unparseable, row 2 right
    results = env.step(["I don't know", _right(problems[2])])
    assert [(r.row, r.format_ok, r.parsed_answer, r.done) for r in results] == [
        (1, False, None, False),
        (2, True, problems[2].answer, True),
    ]
    # turn 3: row 1 wrong again, and that was its last turn
    results = env.step([_wrong(problems[1])])
    assert results[0].done and results[0].feedback is None and env.done and env.active == []
    e0, e1, e2 = env.episodes
    assert [len(e.turns) for e in env.episodes] == [1, 3, 2]
    assert (e0.first_correct_turn, e1.first_correct_turn, e2.first_correct_turn) == (1, None, 2)
    assert [t.reward for t in e1.turns] == [0.0, 0.0, 0.0]
    assert [t.format_ok for t in e1.turns] == [True, False, True]
    assert e1.turns[1].response == "I don't know"
    roles = [m["role"] for m in e1.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]


def test_feedback_text_and_system_prompt_are_configurable():
    p = synthetic.make_problems("test", 1)[0]
    env = Env(max_turns=2, feedback="Wrong, try again!", system_prompt="Be brief.")
    assert env.reset([p])[0][0] == {"role": "system", "content": "Be brief."}
    (r,) = env.step([_wrong(p)])
    assert r.feedback == "Wrong, try again!"
    assert env.messages(0)[-1] == {"role": "user", "content": "Wrong, try again!"}


def test_one_turn_episodes():
    p = synthetic.make_problems("test", 1)[0]
    env = Env(max_turns=1)
    env.reset([p])
    assert env.step([_wrong(p)])[0].done


def test_mixed_tasks_in_one_batch():
    problems = [
        synthetic.make_problems("test", 1)[0],
        Problem("m1", "math", "Half of one?", "\\frac{1}{2}"),
        choice_problem("Capital of France?", ["Paris", "Rome", "Berlin", "Madrid"], 0),
    ]
    env = Env()
    env.reset(problems)
    results = env.step([_right(problems[0]), "\\boxed{0.5}", f"<answer>({problems[2].answer})</answer>"])
    assert all(r.reward == 1.0 and r.done for r in results)


def test_errors():
    env = Env()
    env.reset(synthetic.make_problems("test", 2))
    with pytest.raises(ValueError, match="2 active"):
        env.step(["<answer>1</answer>"])
    with pytest.raises(ValueError, match="unknown task"):
        Env().reset([Problem("x", "chess", "?", "e4")])
    with pytest.raises(ValueError):
        Env(max_turns=0)
