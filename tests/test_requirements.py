"""requirements.txt names every package the notebooks and utils/ import, and keeps the installed torch.

A learner on Colab, or anyone running ``pip install -r requirements.txt`` in a fresh environment, gets
only this file: an import missing from it is a notebook that fails there and nowhere else.
"""
from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"utils"}  # the course's own package
PINNED_LIBRARIES = ("transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")


def requirements() -> dict[str, Requirement]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()]
    return {canonicalize_name(r.name): r for r in reqs}


def python_sources() -> dict[str, str]:
    """{where: Python source} for every notebook code cell (IPython magics turned into Python) and utils/*.py."""
    from IPython.core.inputtransformer2 import TransformerManager

    to_python = TransformerManager().transform_cell
    sources = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code":
                sources[f"{path.relative_to(ROOT)} cell {i + 1}"] = to_python(cell.source)
    for path in sorted((ROOT / "utils").glob("*.py")):
        sources[str(path.relative_to(ROOT))] = path.read_text()
    return sources


def imported_modules() -> dict[str, str]:
    """{top-level module: first place importing it}, third-party only.

    Every ``import`` statement counts, also inside functions; so do the names in ``utils/env.py``'s
    ``STACK``, which the environment check imports by name.
    """
    found: dict[str, str] = {}
    for where, source in python_sources().items():
        tree = ast.parse(source, filename=where)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Assign) and where.endswith("env.py")
                  and any(getattr(t, "id", None) == "STACK" for t in node.targets)):
                names = list(ast.literal_eval(node.value))
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, where)
    return found


def test_the_scan_sees_the_course():
    modules = imported_modules()
    assert {"torch", "transformers", "peft", "trl", "bitsandbytes", "matplotlib", "accelerate"} <= set(modules)
    assert not {"os", "json", "utils"} & set(modules)


def test_every_imported_package_is_in_requirements():
    distributions = metadata.packages_distributions()  # import name -> the PyPI distributions that provide it
    listed = requirements()
    missing = []
    for module, where in sorted(imported_modules().items()):
        names = distributions.get(module)
        if not names:
            missing.append(f"{module} (imported by {where}) is not installed here: install it and add its "
                           "PyPI name to requirements.txt")
        elif not any(canonicalize_name(n) in listed for n in names):
            missing.append(f"{names[0]} (import {module}, in {where})")
    assert not missing, "requirements.txt lacks: " + "; ".join(missing)


def torch_minimum(distribution: str) -> Version | None:
    """The lowest torch version that the installed ``distribution`` accepts (its base requirement)."""
    lows = []
    for line in metadata.requires(distribution) or []:
        req = Requirement(line)
        if canonicalize_name(req.name) == "torch" and (req.marker is None or req.marker.evaluate({"extra": "torch"})):
            lows += [Version(s.version) for s in req.specifier if s.operator in (">=", ">", "~=", "==")]
    return max(lows, default=None)


def test_torch_is_a_lower_bound_that_every_pinned_library_accepts():
    assert "torch" in requirements(), "requirements.txt must list torch, as a lower bound (torch>=...)"
    torch_req = requirements()["torch"]
    operators = {s.operator for s in torch_req.specifier}
    assert operators == {">="}, f"torch must be a lower bound only, so that pip keeps the installed torch: {torch_req}"
    bound = Version(next(iter(torch_req.specifier)).version)
    minimums = {lib: torch_minimum(lib) for lib in PINNED_LIBRARIES}
    assert any(minimums.values()), minimums
    highest = max(v for v in minimums.values() if v)
    assert bound >= highest, f"torch>={bound} lets in a torch that {minimums} refuse"
    assert bound == highest, f"torch>={bound} is stricter than the libraries ({highest}): Colab's torch may not pass"
    assert torch_req.specifier.contains(metadata.version("torch"), prereleases=True)  # course.sh's torch stays


@pytest.mark.parametrize("library", PINNED_LIBRARIES)
def test_the_pinned_libraries_are_the_installed_ones(library):
    req = requirements()[canonicalize_name(library)]
    assert req.specifier.contains(metadata.version(library), prereleases=True), (req, metadata.version(library))
