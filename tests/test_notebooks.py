"""The committed notebooks follow the conventions in notebooks/README.md (nbval runs them; this checks their shape)."""
import re
from pathlib import Path

import nbformat
import pytest

from tools.notebook_tools import problems

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_executed_and_clean(path):
    assert problems(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cells_follow_the_conventions(path):
    cells = nbformat.read(path, as_version=4).cells
    reference = nbformat.read(NOTEBOOKS[0], as_version=4).cells
    assert cells[0].cell_type == "markdown" and "colab-badge.svg" in cells[0].source
    assert path.name in cells[0].source  # the badge opens this notebook
    assert cells[1].source == reference[1].source, "bootstrap cell differs from 00_setup's"
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "MODEL = None" in params[0].source


def test_notebooks_are_the_planned_ones_in_order():
    """Every notebook is named as in the conventions' list (notebooks/README.md), and numbered by it."""
    conventions = (NOTEBOOKS[0].parent / "README.md").read_text()
    planned = re.findall(r"`(\d\d_[a-z0-9_]+)`", conventions.split("## Names and order", 1)[1].split("##", 1)[0])
    assert planned[0] == "00_setup" and len(planned) == len(set(planned))
    for path in NOTEBOOKS:
        assert path.stem in planned, f"{path.name} is not in the planned list of notebooks/README.md"
        assert int(path.stem[:2]) == planned.index(path.stem), f"{path.name} is numbered out of order"
