"""JupyterLab shows the course to a person: notebook 00 run through the UI of a real browser.

JupyterLab starts on loopback as in test_jupyterlab.py, serving a copy of the course (links to utils/ and
data/, a copy of notebooks/00_setup.ipynb), so nothing it does can write a committed file. Headless Chromium,
driven by Playwright (as JupyterLab's own UI tests are), opens the notebook, runs every cell from the menu
(Run > Run All Cells), waits for the kernel to be idle and every cell numbered, and checks what the page shows:
no error or stderr output, and the environment check's OK lines. A screenshot is saved in the test's tmp folder.
"""
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from test_jupyterlab import free_port

ROOT = Path(__file__).resolve().parent.parent
NB00 = ROOT / "notebooks" / "00_setup.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# JupyterLab user settings: every cell kept in the page (no virtual scrolling), no autosave, no news fetch.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
}
RUN_TIMEOUT_MS = 600_000


def environment_check_lines() -> list[str]:
    """``OK <component>`` for each line that 00's environment-check cell printed in the committed notebook."""
    cells = nbformat.read(NB00, as_version=4).cells
    cell = next(c for c in cells if c.cell_type == "code" and "check_environment()" in c.source)
    text = "".join(o.get("text", "") for o in cell.outputs)
    names = re.findall(r"^OK\s+(\S+(?: \S+)?)\s{2,}", text, flags=re.M)
    assert len(names) >= 10, f"the committed environment check has changed form:\n{text}"
    return names


def playwright_or_skip():
    if not CHROMIUM.is_file():
        pytest.skip("Chromium is missing: install it with `apt-get install -y chromium` (Debian's package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is missing: install it with `pip install -r requirements-dev.txt` "
                    "(or `pip install playwright`; no `playwright install` needed: Debian's chromium is used)")
    return sync_playwright


def course_copy(tmp: Path) -> Path:
    """A folder that JupyterLab may write in: links to the course's folders, its own copy of notebook 00.

    The copy's outputs and execution counts are cleared, so that whatever the page shows after the run
    was computed in this run, not committed.
    """
    root = tmp / "course"
    (root / "notebooks").mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name not in ("notebooks", ".git", ".venv"):
            (root / entry.name).symlink_to(entry)
    nb = nbformat.read(NB00, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, root / "notebooks" / NB00.name)
    return root


def start_lab(tmp: Path, root: Path):
    port, token = free_port(), secrets.token_hex(16)
    settings = tmp / "lab-settings"
    for rel, value in SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"))
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI runs as root
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, (tmp / "server.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=5):
                break
        except OSError:
            assert time.monotonic() < deadline, "JupyterLab did not answer within 60 s"
            time.sleep(0.5)
    return server, log, f"http://127.0.0.1:{port}", token


# Every code cell numbered (the copy starts with none) and the kernel idle again.
ALL_CELLS_RUN = """() => {
    const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent);
    return status && status.getAttribute('data-status') === 'idle' && prompts.length > 0
        && prompts.every(p => /\\[\\d+\\]/.test(p));
}"""


def test_notebook_00_runs_in_jupyterlab_in_a_browser(tmp_path):
    sync_playwright = playwright_or_skip()
    committed = hashlib.sha256(NB00.read_bytes()).hexdigest()
    expected = environment_check_lines()
    code_cells = sum(c.cell_type == "code" for c in nbformat.read(NB00, as_version=4).cells)
    root = course_copy(tmp_path)
    server, log, base, token = start_lab(tmp_path, root)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/notebooks/{NB00.name}?token={token}", timeout=120_000)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
            # the kernel has started and connected (running before that opens a kernel-selection dialog)
            page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).wait_for(timeout=120_000)
            assert page.locator(".jp-OutputArea-output").count() == 0
            # what a person does: the Run menu, then Run All Cells
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            page.wait_for_function(ALL_CELLS_RUN, timeout=RUN_TIMEOUT_MS, polling=1000)

            prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
            numbers = [int(n) for t in prompts for n in re.findall(r"\[(\d+)\]", t)]
            assert numbers == list(range(1, code_cells + 1)), prompts
            stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            shown = stderr.all_inner_texts()
            assert shown == [], f"the page shows error or stderr output:\n{chr(10).join(shown)[:3000]}"
            outputs = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            assert "Traceback" not in outputs and not re.search(r"^FAIL\s", outputs, flags=re.M)
            for name in expected:
                assert re.search(rf"^OK\s+{re.escape(name)}\s", outputs, flags=re.M), f"no 'OK {name}' line shown"

            check = page.locator(".jp-OutputArea-output", has_text="bitsandbytes backend").first
            check.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "00_setup_environment_check.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert (tmp_path / "00_setup_environment_check.png").stat().st_size > 10_000
    assert hashlib.sha256(NB00.read_bytes()).hexdigest() == committed, "the committed notebook was modified"
