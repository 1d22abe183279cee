"""utils.check_answer and utils.check_function: say right, wrong or unanswered, and never print the expected answer."""
import pytest

from utils import check_answer, check_function


def test_unanswered_passes_and_says_how(capsys):
    check_answer("1a", ..., 14)
    out = capsys.readouterr().out
    assert "not answered yet" in out and "14" not in out


def test_right_answers(capsys):
    check_answer("1", 14, 14)
    check_answer("2", {20, 10}, {10, 20})
    check_answer("3", (512_000, 166_400), (512_000, 166_400))
    check_answer("4", 4.0635, 4.063477)  # within rel_tol 1e-3
    assert capsys.readouterr().out.count("correct") == 4


@pytest.mark.parametrize("answer, expected", [(13, 14), ({10}, {10, 20}), ((512_000, 1), (512_000, 166_400)),
                                              (4.2, 4.0635), ("14", 14.0), (None, 3)])
def test_wrong_answers_fail_without_revealing(answer, expected):
    with pytest.raises(AssertionError) as err:
        check_answer("ex", answer, expected)
    assert repr(answer) in str(err.value) and repr(expected) not in str(err.value).replace(repr(answer), "")


def _check_square(f):  # the kind of check a notebook writes: against a reference computed another way
    for x in (0, 3, -2.5):
        assert f(x) == x * x, f"f({x}) = {f(x)!r}"


def test_function_unanswered_passes_and_says_how(capsys):
    def square(x):
        ...

    check_function("Ex 1", square, _check_square, probe=(3,), solution=lambda x: x * x)
    assert "Ex 1: not answered yet: write the body of square above" in capsys.readouterr().out


def test_function_right_and_wrong(capsys):
    def square(x):
        return x * x

    def twice(x):
        return 2 * x

    check_function("Ex 1", square, _check_square, probe=(3,))
    assert capsys.readouterr().out == "Ex 1: correct\n"
    with pytest.raises(AssertionError, match=r"Ex 1: twice is not right yet: f\(3\) = 6"):
        check_function("Ex 1", twice, _check_square, probe=(3,))


def test_a_broken_reference_solution_fails_before_the_learner_is_judged():
    def square(x):
        ...

    with pytest.raises(AssertionError, match="f\\(3\\) = 6"):  # the check no longer holds for the notebook's own solution
        check_function("Ex 1", square, _check_square, probe=(3,), solution=lambda x: 2 * x)
