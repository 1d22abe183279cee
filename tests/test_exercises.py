"""utils.check_answer: says right, wrong or unanswered, and never prints the expected answer."""
import pytest

from utils import check_answer


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
