"""The requirements files name every package the course imports, and requirements.txt keeps the installed torch.

A learner on Colab, or anyone running ``pip install -r requirements.txt`` in a fresh environment, gets
only requirements.txt: an import missing from it is a notebook that fails there and nowhere else. So it must
cover the notebooks, the scripts they launch (``notebooks/**/*.py``) and ``utils/``, every folder down.
Maintainers' tools (``tools/``) and the tests run from requirements-dev.txt (which includes requirements.txt).
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
PINNED_LIBRARIES = ("transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
# Each requirements file and the folders whose imports it must cover; every *.py and *.ipynb under them counts.
SCANNED = {
    "requirements.txt": ("notebooks", "utils"),
    "requirements-dev.txt": ("tools", "tests"),
}


def requirements(name: str = "requirements.txt") -> dict[str, Requirement]:
    """{canonical name: requirement} of a requirements file, following its ``-r other-file`` lines."""
    found: dict[str, Requirement] = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            found.update(requirements(line.split(None, 1)[1]))
        elif line:
            req = Requirement(line)
            found[canonicalize_name(req.name)] = req
    return found


def python_sources(folders: tuple[str, ...]) -> dict[str, str]:
    """{where: Python source} for every *.py file and notebook code cell (IPython magics turned into Python)
    under ``folders``, at any depth."""
    from IPython.core.inputtransformer2 import TransformerManager

    to_python = TransformerManager().transform_cell
    sources = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.ipynb")):
            if ".ipynb_checkpoints" in path.parts or "outputs" in path.relative_to(ROOT).parts:
                continue
            for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
                if cell.cell_type == "code":
                    sources[f"{path.relative_to(ROOT)} cell {i + 1}"] = to_python(cell.source)
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "outputs" not in path.relative_to(ROOT).parts:
                sources[str(path.relative_to(ROOT))] = path.read_text()
    return sources


def own_module_names() -> set[str]:
    """Every top-level name that the repository itself defines: its folders (utils, tools, ...) and the stem of
    every Python file under the scanned folders (a test imports ``gpu_check`` from tools/, notebook 09 the
    ``fsdp_step.py`` of notebooks/scripts/ that it launches)."""
    names = {p.name for p in ROOT.iterdir() if p.is_dir()}
    for folder in {f for folders in SCANNED.values() for f in folders}:
        names |= {p.stem for p in (ROOT / folder).rglob("*.py")}
    return names


def imported_modules(folders: tuple[str, ...]) -> dict[str, str]:
    """{top-level module: first place importing it}, third-party only, for the sources under ``folders``.

    Every ``import`` statement counts, also inside functions; so do the names in ``utils/env.py``'s
    ``STACK``, which the environment check imports by name.
    """
    found: dict[str, str] = {}
    own = own_module_names()
    for where, source in python_sources(folders).items():
        tree = ast.parse(source, filename=where)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Assign) and where == "utils/env.py"
                  and any(getattr(t, "id", None) == "STACK" for t in node.targets)):
                names = list(ast.literal_eval(node.value))
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in own:
                    found.setdefault(top, where)
    return found


def test_the_scan_sees_the_course():
    course, dev = imported_modules(SCANNED["requirements.txt"]), imported_modules(SCANNED["requirements-dev.txt"])
    assert {"torch", "transformers", "peft", "trl", "bitsandbytes", "matplotlib", "accelerate"} <= set(course)
    assert not {"os", "json", "utils", "tools", "test_jupyterlab"} & (set(course) | set(dev))
    assert {"pytest", "nbformat", "nbclient"} <= set(dev)
    # every folder down: the estimator's modules, the maintainers' tools
    places = set(python_sources(SCANNED["requirements.txt"])) | set(python_sources(SCANNED["requirements-dev.txt"]))
    assert {"utils/estimator/estimate.py", "tools/gpu_check.py", "tests/conftest.py"} <= places
    assert any(p.startswith("notebooks/00_setup.ipynb cell ") for p in places)
    # the course's own names hide no installed package (a course file named like one would shadow it)
    assert {"gpu_check", "conftest", "utils"} <= own_module_names()
    assert not own_module_names() & set(metadata.packages_distributions())


@pytest.mark.parametrize("file", SCANNED)
def test_every_imported_package_is_in_requirements(file):
    distributions = metadata.packages_distributions()  # import name -> the PyPI distributions that provide it
    listed = requirements(file)
    missing = []
    for module, where in sorted(imported_modules(SCANNED[file]).items()):
        names = distributions.get(module)
        if not names:
            missing.append(f"{module} (imported by {where}) is not installed here: install it and add its "
                           f"PyPI name to {file}")
        elif not any(canonicalize_name(n) in listed for n in names):
            missing.append(f"{names[0]} (import {module}, in {where})")
    assert not missing, f"{file} lacks: " + "; ".join(missing)


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
