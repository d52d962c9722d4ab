"""Math answers: extraction from tags and boxes, equivalence by math-verify, normalisation for repeats."""

import pytest

from drift_jax.envs import answers_equal, check_math, extract_math_answer, normalize_answer
from drift_jax.envs.math_task import boxed_contents, prompt, verify
from drift_jax.envs.records import Problem

AGREE = [
    # fractions and decimals
    ("<answer>0.5</answer>", "\\frac{1}{2}"),
    ("<answer>1/2</answer>", "0.5"),
    ("\\boxed{\\dfrac12}", "1/2"),
    ("<answer>\\frac{2}{4}</answer>", "0.5"),
    ("<answer>10.0</answer>", "10"),
    ("<answer>1,000</answer>", "1000"),
    ("<answer>-3</answer>", "- 3"),
    # equations against values
    ("<answer>x = 3</answer>", "3"),
    ("<answer>3</answer>", "x=3"),
    # units, currency, degrees, percent
    ("<answer>5 cm</answer>", "5"),
    ("\\boxed{5\\text{ cm}}", "5"),
    ("<answer>\\$5</answer>", "5"),
    ("<answer>30^\\circ</answer>", "30"),
    ("<answer>50\\%</answer>", "50"),
    # LaTeX forms
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),
    ("$\\boxed{12\\sqrt{3}}$", "12 \\sqrt 3"),
    ("<answer>(x+1)^2</answer>", "x^2+2x+1"),
    ("<answer>$\\frac{1}{2}$</answer>", "\\dfrac12"),
    ("<answer>\\text{Monday}</answer>", "\\text{Monday}"),
    # intervals and sets
    ("<answer>(1, 2]</answer>", "(1,2]"),
    ("<answer>(-\\infty, 3)</answer>", "(-\\infty,3)"),
    ("<answer>\\{1,2\\}</answer>", "\\{2,1\\}"),
    # where the answer sits
    ("<answer>\\boxed{4}</answer>", "4"),
    ("so the result is \\boxed{7}.", "7"),
    ("<answer>The answer is 5.</answer>", "5"),
    ("<answer>4</answer> let me check <answer>4.0</answer>", "4"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("<ANSWER>42</ANSWER>", "42"),
    ("<answer>\n42\n</answer>", "42"),
    ("\\boxed{42}", "\\boxed{42}"),  # a gold answer still in its box
    ("<answer>1.0e3</answer>", "1000"),
    ("<answer>2\\sqrt{2}</answer>", "\\sqrt{8}"),
    ("<answer>sqrt(3)/2</answer>", "\\frac{\\sqrt{3}}{2}"),
    ("<answer>x \\in (1, 2]</answer>", "(1,2]"),
    ("<answer>\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}</answer>", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("<answer>no solution</answer>", "\\text{no solution}"),  # text answers compare normalised
    ("<answer>\\text{Yes}</answer>", "yes"),
]

DISAGREE = [
    ("<answer>3</answer>", "4"),
    ("<answer>[1,2]</answer>", "(1,2)"),  # closed vs open interval
    ("<answer>0.333</answer>", "\\frac13"),  # a rounded value is not the fraction
    ("<answer>3, 4</answer>", "3"),  # hedging inside one answer
    # empty answers
    ("<answer></answer>", "3"),
    ("<answer>   </answer>", "3"),
    ("\\boxed{}", "3"),
    ("<answer>3</answer>", ""),
    # missing tags
    ("The answer is 3", "3"),
    ("<answer>3", "3"),
    ("3", "3"),
    # two different answers
    ("<answer>3</answer> or maybe <answer>4</answer>", "4"),
    ("\\boxed{3} or \\boxed{4}", "3"),
    ("<answer>3 or 4</answer>", "3"),
    ("<answer>(3,2)</answer>", "(2, 3)"),  # ordered pairs keep their order
    ("<answer>\\pi</answer>", "3.14"),
    ("<answer>\\frac{1}{0}</answer>", "1"),
]


@pytest.mark.parametrize("response,gold", AGREE)
def test_equivalent_answers_are_correct(response, gold):
    assert check_math(response, gold)


@pytest.mark.parametrize("response,gold", DISAGREE)
def test_different_missing_or_ambiguous_answers_are_wrong(response, gold):
    assert not check_math(response, gold)


def test_never_plain_string_equality():
    assert not answers_equal("1/2", "2/1")
    assert answers_equal("\\frac{1}{2}", "0.5")


def test_extraction():
    assert extract_math_answer("<answer> $7$. </answer>") == "7"
    assert extract_math_answer("work \\boxed{\\frac{a}{b+1}} done") == "\\frac{a}{b+1}"
    assert extract_math_answer("<answer>1</answer><answer>2</answer>") is None
    assert extract_math_answer("no answer here") is None
    assert extract_math_answer("<answer></answer>") is None
    # answer tags win over boxes elsewhere in the reasoning
    assert extract_math_answer("\\boxed{8} hmm <answer>7</answer>") == "7"


def test_boxed_contents_handles_nesting_and_bare_form():
    assert boxed_contents("\\boxed{\\frac{1}{2}} and \\boxed 5 and \\fbox{x}") == ["\\frac{1}{2}", "5", "x"]
    assert boxed_contents("\\boxed{unclosed") == []


def test_normalize_answer_for_repeat_detection():
    assert len({normalize_answer(a) for a in ["0.5", "1/2", "\\dfrac{1}{2}", "\\frac12", " $1/2$ "]}) == 1
    assert normalize_answer("1,000") == normalize_answer("1000") == "1000"
    assert normalize_answer("\\left(1, 2\\right)") == "(1,2)"
    assert normalize_answer("3") != normalize_answer("4")
    assert normalize_answer(None) is None


def test_verify_and_prompt():
    p = Problem("id", "math", "What is 1+1?", "2")
    assert "\\boxed{}" in prompt(p) and prompt(p).startswith("What is 1+1?")
    v = verify(p, "\\boxed{2}")
    assert (v.parsed_answer, v.format_ok, v.correct) == ("2", True, True)
    v = verify(p, "I think 2")
    assert (v.parsed_answer, v.format_ok, v.correct) == (None, False, False)
    v = verify(p, "<answer>3</answer>")
    assert (v.parsed_answer, v.format_ok, v.correct) == ("3", True, False)


def test_explosive_answers_do_not_hang_worker_threads():
    """No SIGALRM outside the main thread, so towers of powers must not reach sympy at all."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    start = time.time()
    with ThreadPoolExecutor(1) as pool:
        assert not pool.submit(check_math, "<answer>9^{9^{9^{9}}}</answer>", "1").result(timeout=30)
        assert pool.submit(check_math, "<answer>9^{9^{9}}</answer>", "9^{9^{9}}").result(timeout=30)
    assert time.time() - start < 5


def test_check_math_in_a_thread():
    """math-verify's timeout uses SIGALRM (main thread only); rollouts may verify in worker threads."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(check_math, ["<answer>0.5</answer>", "<answer>2</answer>"], ["1/2", "3"])) == [
            True,
            False,
        ]
