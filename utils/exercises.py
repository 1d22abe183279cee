"""Checks for the exercises at the end of each notebook, without showing the answer.

The learner's cell holds ``answer = ...`` (Python's Ellipsis) until they fill it in; the check cell
computes the reference itself (measured or derived in the notebook) and calls :func:`check_answer`.
An exercise that asks for a function gives its signature with the body ``...``; the check cell calls
:func:`check_function` with a check against the library or a measurement.
"""
from __future__ import annotations

import math
from typing import Any, Callable


def _equal(answer: Any, expected: Any, rel_tol: float) -> bool:
    if isinstance(expected, (set, frozenset)) or isinstance(answer, (set, frozenset)):
        try:
            return set(answer) == set(expected)
        except TypeError:
            return False
    if isinstance(expected, (tuple, list)):
        return (isinstance(answer, (tuple, list)) and len(answer) == len(expected)
                and all(_equal(a, e, rel_tol) for a, e in zip(answer, expected)))
    if isinstance(expected, float) or isinstance(answer, float):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (answer, expected))
        return numbers and math.isclose(answer, expected, rel_tol=rel_tol, abs_tol=rel_tol * 1e-6)
    return answer == expected


def check_answer(name: str, answer: Any, expected: Any, rel_tol: float = 1e-3) -> None:
    """Compare a learner's ``answer`` with ``expected`` and say so, without printing ``expected``.

    - ``answer is ...`` (not answered yet): prints how to answer, so a notebook with unanswered
      exercises still runs top to bottom.
    - a right answer: prints ``"<name>: correct"``. Floats match within
      ``rel_tol``; sets, tuples and lists element by element.
    - a wrong answer: raises ``AssertionError`` naming the exercise and the answer given (not the
      expected one).
    """
    if answer is ...:
        print(f"{name}: not answered yet: replace `...` in the cell above with your answer, then run both cells")
        return
    if not _equal(answer, expected, rel_tol):
        raise AssertionError(f"{name}: {answer!r} is not right yet; look again at the hint and try once more")
    print(f"{name}: correct")


def check_function(name: str, fn: Callable[..., Any], check: Callable[[Callable[..., Any]], None],
                   probe: tuple = (), solution: Callable[..., Any] | None = None) -> None:
    """Check a function the learner writes, whose body is ``...`` until they fill it in.

    - ``check(f)`` raises ``AssertionError`` when ``f`` gives a wrong result: it compares ``f`` with the
      library or a measurement, never with a printed answer.
    - ``solution``, the notebook's reference solution, is checked first with the same ``check``, so that
      a check that no longer holds fails here, on the maintainer's machine, not on the learner's answer.
    - ``fn(*probe) is None`` (the body is still ``...``): prints how to answer, so that a notebook with
      unanswered exercises still runs top to bottom.
    - a right function: prints ``"<name>: correct"``; a wrong one raises ``AssertionError`` naming the
      exercise and what ``check`` found.
    """
    if solution is not None:
        check(solution)
    if fn(*probe) is None:
        print(f"{name}: not answered yet: write the body of {fn.__name__} above, then run both cells")
        return
    try:
        check(fn)
    except AssertionError as err:
        raise AssertionError(f"{name}: {fn.__name__} is not right yet: {err}") from None
    print(f"{name}: correct")
