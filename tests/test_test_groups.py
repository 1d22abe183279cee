"""Tests that share a fixture built once per module run on one pytest-xdist worker, as ``course.sh`` runs them.

``tests/conftest.py`` marks such tests with one ``xdist_group``; ``course.sh test-units`` passes
``--dist loadgroup``. If the mark stops reaching the scheduler (pytest 9.2 with pytest-xdist 3.8.0:
pytest-dev/pytest-xdist#1386, which is why requirements-dev.txt keeps pytest below 9.2), the tests are spread
one by one and an expensive module fixture (the GPU check's dry run, about 40 s) is built on both workers.
Nothing fails then but the clock, so this test fails instead.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CONFTEST = f'''
import importlib.util
spec = importlib.util.spec_from_file_location("course_conftest", {str(TESTS / "conftest.py")!r})
course_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(course_conftest)
pytest_collection_modifyitems = course_conftest.pytest_collection_modifyitems
'''

SHARED = '''
import os
import pytest

@pytest.fixture(scope="module")
def built():
    with open(os.environ["BUILD_LOG"], "a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "none") + "\\n")

def test_a(built): pass
def test_b(built): pass
def test_c(built): pass
def test_d(built): pass
'''

ALONE = "".join(f"def test_alone_{i}(): pass\n" for i in range(6))


def test_a_module_fixture_is_built_once_with_two_workers(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_alone.py").write_text(ALONE)
    (tmp_path / "test_shared.py").write_text(SHARED)
    log = tmp_path / "builds.txt"
    env = {**os.environ, "BUILD_LOG": str(log), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", "--no-loadscope-reorder", str(tmp_path)],  # course.sh's options
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10 passed" in proc.stdout, proc.stdout
    workers = log.read_text().split()
    assert len(workers) == 1 and workers[0].startswith("gw"), (
        f"the module fixture was built on {workers}: the xdist_group marks of tests/conftest.py did not reach "
        "pytest-xdist's scheduler (see this module's docstring)")
