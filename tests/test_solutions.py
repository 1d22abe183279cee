"""utils/solutions.py holds every function exercise's reference solution; no notebook shows one in a cell."""
import json
import re
from pathlib import Path

from utils import solutions

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def code_of(notebook: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")


def test_every_check_function_takes_its_solution_from_utils_solutions():
    named = []
    for notebook in NOTEBOOKS:
        code = code_of(notebook)
        calls = re.findall(r"utils\.check_function\(.*?\)\n", code, flags=re.S)
        for call in calls:
            given = re.search(r"solution=solutions\.(\w+)\)", call)
            assert given, f"{notebook.name}: a check_function call without solution=solutions.<name>: {call[:80]!r}"
            assert callable(getattr(solutions, given[1], None)), f"{notebook.name}: utils.solutions has no {given[1]}"
            named.append(given[1])
        assert not re.search(r"^def solution_", code, flags=re.M), f"{notebook.name} defines a reference solution in a cell"
    public = {n for n, f in vars(solutions).items() if callable(f) and getattr(f, "__module__", "") == solutions.__name__}
    assert public == set(named), f"solutions no notebook checks: {sorted(public - set(named))}"
