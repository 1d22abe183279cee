"""The bootstrap cell (tools/bootstrap_cell.py, cell 2 of every notebook) on a fake Colab and in local Jupyter.

The Colab runs happen in a subprocess whose ``sys.modules`` holds a fake ``google.colab``, with a local
``file://`` git repository standing in for the course and ``COURSE_DIR`` pointing into a temporary
folder instead of ``/content/course``. pip runs for real, with ``PIP_NO_INDEX=1``: nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

CELL = Path(__file__).resolve().parent.parent / "tools" / "bootstrap_cell.py"
REPO_ROOT = CELL.parent.parent
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MISSING_PACKAGE = "course-test-no-such-package-4f1c"

# Runs the cell `runs` times in one namespace (a cell rerun), then reports where it left the kernel.
COLAB_KERNEL = """
import importlib, json, os, sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")
source, namespace = open(sys.argv[1]).read(), {"__name__": "__main__"}
for _ in range(int(sys.argv[2])):
    exec(compile(source, "bootstrap_cell", "exec"), namespace)
import utils
print("REPORT", json.dumps({"cwd": os.getcwd(), "root": str(namespace["ROOT"]), "utils": utils.__file__,
                            "name": utils.NAME}))
"""


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_course(path: Path, requirements: str = "") -> str:
    """A git repository shaped like the course: utils/, notebooks/, requirements.txt. Returns its file:// URL."""
    (path / "utils").mkdir(parents=True)
    (path / "utils" / "__init__.py").write_text('NAME = "the fake course"\n')
    (path / "notebooks").mkdir()
    (path / "notebooks" / "00_setup.ipynb").write_text("{}\n")
    (path / "requirements.txt").write_text(requirements)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", ".", cwd=path)
    git("commit", "-q", "-m", "course", cwd=path)
    return path.as_uri()


def run_on_colab(tmp_path: Path, runs: int = 1, repo: str | None = None) -> subprocess.CompletedProcess:
    """Start a fresh 'Colab kernel' in tmp_path/content (Colab's working directory after a restart)."""
    content = tmp_path / "content"
    content.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_REPO", "PYTHONPATH")}
    env.update(COURSE_DIR=str(content / "course"), PIP_NO_INDEX="1", PIP_LOG=str(tmp_path / "pip.log"),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    if repo is not None:
        env["COURSE_REPO"] = repo
    return subprocess.run([sys.executable, "-c", COLAB_KERNEL, str(CELL), str(runs)], cwd=content, env=env,
                          capture_output=True, text=True, timeout=300)


def report(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.split("REPORT ", 1)[1])


def pip_runs(tmp_path: Path) -> int:
    log = tmp_path / "pip.log"
    return log.read_text().count("Using pip ") if log.exists() else 0


def test_the_cell_is_short_and_plain_python():
    source = CELL.read_text()
    compile(source, str(CELL), "exec")
    assert len(source.splitlines()) <= 32, "the bootstrap cell is read by every learner: keep it short"


def test_colab_clones_once_and_survives_a_rerun_and_a_restart(tmp_path):
    url = make_course(tmp_path / "origin")
    course = tmp_path / "content" / "course"

    first = report(run_on_colab(tmp_path, runs=2, repo=url))  # run, then rerun the cell in the same kernel
    assert Path(first["cwd"]) == course / "notebooks"
    assert Path(first["root"]) == course and Path(first["utils"]) == course / "utils" / "__init__.py"
    assert first["name"] == "the fake course"
    assert pip_runs(tmp_path) == 1, "requirements installed more than once in one runtime"
    head = git("rev-parse", "HEAD", cwd=course)

    # The course moves on upstream; then "Restart session": a new kernel, back in /content.
    (tmp_path / "origin" / "NEWS").write_text("a later commit\n")
    git("add", "NEWS", cwd=tmp_path / "origin")
    git("commit", "-q", "-m", "later", cwd=tmp_path / "origin")
    done = run_on_colab(tmp_path, runs=1, repo=url)
    second = report(done)
    assert second == first
    assert git("rev-parse", "HEAD", cwd=course) == head and not (course / "NEWS").exists(), "pulled silently"
    assert f"Using the course in {course}" in done.stdout and "git -C" in done.stdout  # says it did not update
    assert pip_runs(tmp_path) == 1, "requirements reinstalled after a restart"

    # A changed requirements.txt (a later course version) is installed again.
    (course / "requirements.txt").write_text("# changed\n")
    report(run_on_colab(tmp_path, runs=1, repo=url))
    assert pip_runs(tmp_path) == 2


def test_a_failing_pip_shows_pips_own_message(tmp_path):
    url = make_course(tmp_path / "origin", requirements=f"{MISSING_PACKAGE}\n")
    done = run_on_colab(tmp_path, repo=url)
    assert done.returncode != 0
    assert f"No matching distribution found for {MISSING_PACKAGE}" in done.stdout  # pip's text, shown
    assert "RuntimeError" in done.stderr and "its output is above" in done.stderr
    assert not (tmp_path / "content" / "course" / ".requirements-installed").exists()
    # Fixed (here: requirements emptied), the same cell goes on from the existing clone.
    (tmp_path / "content" / "course" / "requirements.txt").write_text("")
    assert Path(report(run_on_colab(tmp_path, repo=url))["cwd"]).name == "notebooks"


def test_a_failing_clone_shows_gits_own_message(tmp_path):
    done = run_on_colab(tmp_path, repo=(tmp_path / "nowhere").as_uri())
    assert done.returncode != 0
    assert "fatal:" in done.stdout and "its output is above" in done.stderr


def test_the_placeholder_url_gets_a_clear_message(tmp_path):
    done = run_on_colab(tmp_path, repo=None)  # COURSE_REPO unset: the default, still OWNER
    assert done.returncode != 0
    assert "placeholder" in done.stderr and "os.environ['COURSE_REPO']" in done.stderr
    assert not (tmp_path / "content" / "course").exists()


@pytest.mark.parametrize("cwd", ["notebooks", "."], ids=["cwd=notebooks", "cwd=repo root"])
def test_locally_it_only_makes_utils_importable(cwd):
    """As a cell of a real Jupyter kernel, started in notebooks/ (nbval, nbconvert) or in the repo root."""
    from nbclient import NotebookClient

    check = ("import importlib.util, os\n"
             "print(ROOT, importlib.util.find_spec('utils').origin, os.getcwd(), sep='|')")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL.read_text()),
                                         nbformat.v4.new_code_cell(CELL.read_text()),
                                         nbformat.v4.new_code_cell(check)])
    directory = (REPO_ROOT / cwd).resolve()
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(directory)}}).execute()
    assert nb.cells[0].outputs == [] and nb.cells[1].outputs == [], "the cell prints nothing locally"
    root, origin, final_cwd = nb.cells[2].outputs[0]["text"].strip().split("|")
    assert Path(root) == REPO_ROOT and Path(origin) == REPO_ROOT / "utils" / "__init__.py"
    assert Path(final_cwd) == directory, "locally the cell must not change the working directory"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_this_bootstrap_cell(path):
    """Cell 2 of every notebook is tools/bootstrap_cell.py, as it is (the one place that checks it)."""
    cells = nbformat.read(path, as_version=4).cells
    assert cells[1].cell_type == "code", f"cell 2 of {path.name} is not the bootstrap code cell"
    assert cells[1].source.rstrip("\n") == CELL.read_text().rstrip("\n"), \
        f"cell 2 of {path.name} differs from tools/bootstrap_cell.py: paste the file into it"
