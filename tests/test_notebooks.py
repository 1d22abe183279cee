"""The committed notebooks follow the conventions in notebooks/README.md (nbval runs them; this checks their shape)."""
import re
from pathlib import Path

import nbformat
import pytest

from tools.notebook_tools import problems

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_executed_and_clean(path):
    assert problems(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cells_follow_the_conventions(path):
    """Title cell with this notebook's badge, and one parameters cell (the bootstrap cell: test_bootstrap.py)."""
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and "colab-badge.svg" in cells[0].source
    assert path.name in cells[0].source  # the badge opens this notebook
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "MODEL = None" in params[0].source


def test_notebooks_are_the_planned_ones_in_order():
    """The notebooks are exactly the conventions' list (notebooks/README.md), each numbered by its place in it."""
    conventions = (ROOT / "notebooks" / "README.md").read_text()
    planned = re.findall(r"`(\d\d_[a-z0-9_]+)`", conventions.split("## Names and order", 1)[1].split("##", 1)[0])
    assert planned and len(planned) == len(set(planned)), planned
    for number, stem in enumerate(planned):
        assert int(stem[:2]) == number, f"{stem} is listed at place {number} of notebooks/README.md"
    assert [p.stem for p in NOTEBOOKS] == planned, "notebooks/ differs from the list in notebooks/README.md"
