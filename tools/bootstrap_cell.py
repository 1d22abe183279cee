# Bootstrap (the same in every notebook). Locally and in CI it only makes `utils` importable. On Colab it clones the
# course once, installs requirements.txt once per runtime (Colab's torch is kept) and enters its notebooks/ folder.
import os, subprocess, sys
from pathlib import Path

COURSE_REPO = os.environ.get("COURSE_REPO", "https://github.com/OWNER/finetune-on-a-consumer-gpu")
COURSE_DIR = Path(os.environ.get("COURSE_DIR", "/content/course"))

def _run(*cmd):  # on failure, show the command's own output, then stop with a clear error
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print(done.stdout, done.stderr, sep="\n")
        raise RuntimeError(f"`{' '.join(cmd)}` failed (its output is above): fix that, then rerun this cell.")

if "google.colab" in sys.modules:  # safe to rerun, and after "Restart session"
    if COURSE_DIR.is_dir():
        print(f"Using the course in {COURSE_DIR}, as it is (to update it: !git -C {COURSE_DIR} pull)")
    elif "/OWNER/" in COURSE_REPO:
        raise RuntimeError(f"{COURSE_REPO} is a placeholder: run os.environ['COURSE_REPO'] = "
                           "'https://github.com/<owner>/finetune-on-a-consumer-gpu' in a cell, then rerun this one.")
    else:
        _run("git", "clone", "--depth=1", COURSE_REPO, str(COURSE_DIR))
    requirements, installed = COURSE_DIR / "requirements.txt", COURSE_DIR / ".requirements-installed"
    if not installed.is_file() or installed.read_text() != requirements.read_text():
        _run(sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements))
        installed.write_text(requirements.read_text())  # the marker: installed in this runtime
    os.chdir(COURSE_DIR / "notebooks")
ROOT = next((p for p in (Path.cwd(), Path.cwd().parent) if (p / "utils" / "__init__.py").is_file()), None)
if ROOT is None:
    raise RuntimeError("utils/ not found: start Jupyter in the course's folder or in its notebooks/ folder.")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
