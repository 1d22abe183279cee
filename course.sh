#!/usr/bin/env bash
# The course's two commands (see README.md, Quickstart):
#   bash course.sh lab    set everything up, then open the course in JupyterLab
#   bash course.sh test   set everything up, then run the unit tests and every notebook under nbval
# and, for maintainers:
#   bash course.sh execute [notebooks/NN_*.ipynb ...]   re-run notebooks in place and clean their metadata
#   bash course.sh setup                                only set up
#   bash course.sh test-units [pytest option ...]       the first half of `test`: tests/
#   bash course.sh test-notebooks [pytest option ...]   the second half: every notebook under strict nbval
# Both halves run two tests at a time, one thread each (COURSE_TEST_JOBS=1: one at a time).
#   bash course.sh gpu-check [--dry-run] [options]      every notebook and measured training steps on a CUDA GPU,
#                                                       results in gpu_check.json (tools/gpu_check.py --help)
#   bash course.sh gpu-kit [options]                    the wheels an offline GPU machine lacks for gpu-check, in
#                                                       .gpu_kit/, checked against 64 MiB (tools/gpu_kit.sh --help)
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION=2.13.0
VENV=${COURSE_VENV:-.venv}

setup() {
  local py=${PYTHON:-}
  if [ -z "$py" ]; then
    for cand in python3.11 python3; do command -v "$cand" >/dev/null && py=$cand && break; done
  fi
  [ -n "$py" ] || { echo "course.sh: Python 3.11 not found; install it (or set PYTHON=/path/to/python3.11)." >&2; exit 1; }
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  # --no-compile: pip does not byte-compile every installed module (a third of a fresh set-up's time);
  # Python compiles what it imports, once, on first import.
  local pip=(python -m pip install -q --no-compile)
  if ! python -c "import importlib.metadata as m, sys; sys.exit(m.version('torch').split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "course.sh: NVIDIA GPU found: installing torch $TORCH_VERSION with CUDA"
      "${pip[@]}" "torch==$TORCH_VERSION"
    else
      echo "course.sh: no NVIDIA GPU: installing the CPU build of torch $TORCH_VERSION"
      # "+cpu" matches only CPU builds: from the indexes pip already knows (a local wheel, a mirror),
      # else from PyTorch's CPU index. Never the multi-GB CUDA build.
      "${pip[@]}" "torch==$TORCH_VERSION+cpu" 2>/dev/null \
        || "${pip[@]}" "torch==$TORCH_VERSION+cpu" \
             --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
    fi
  fi
  # pip again only when a requirements file changed since the last install into this venv
  local stamp="$VENV/.course-requirements"
  if ! cat requirements.txt requirements-dev.txt | cmp -s - "$stamp"; then
    "${pip[@]}" -r requirements-dev.txt
    cat requirements.txt requirements-dev.txt > "$stamp"
  fi
  python -c "import torch; print('course.sh: torch', torch.__version__, '| CUDA' if torch.cuda.is_available() else '| CPU')"
}

# Python keeps the bytecode of what it imports in __pycache__, unless PYTHONDONTWRITEBYTECODE is set (some CI
# images set it): then every kernel, test process and torchrun rank compiles torch, transformers and trl from
# source again: importing torch, transformers, trl, peft, bitsandbytes and datasets took 14 s instead of 6 on a
# 2-core machine. The test and execute commands keep the cache (in .venv).
keep_bytecode() { unset PYTHONDONTWRITEBYTECODE; }

# Both halves run two tests at a time (pytest-xdist), each with one thread: that keeps both cores of a small
# machine busy, where two processes of two threads each would wait on each other. COURSE_TEST_JOBS sets how many
# at a time; COURSE_TEST_JOBS=1 runs one at a time with torch's own thread count.
JOBS=${COURSE_TEST_JOBS:-2}
parallel() {  # parallel COMMAND...: run COMMAND, with one thread and `-n $JOBS` when JOBS > 1
  if [ "$JOBS" -gt 1 ]; then
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$@" -n "$JOBS"
  else
    "$@"
  fi
}

# The unit tests and tests/test_any_architecture.py (every notebook on a random GPT-Neo, outputs not compared).
# A test module stays on one worker, so that its fixtures are built once; the architecture test's notebooks are
# spread one by one, the longest first (tests/conftest.py). The 20 slowest tests are listed at the end: this pass
# is the longest of CI, and that list says where its time goes.
test_units() {
  local dist=()
  [ "$JOBS" -gt 1 ] && dist=(--dist loadgroup --no-loadscope-reorder)
  parallel python -m pytest tests "${dist[@]}" -p no:cacheprovider --durations=20 "$@"
}

# Every notebook under strict nbval: each cell's output compared with the committed one (tests/sanitize.cfg).
# Two notebooks at a time, a notebook's cells in order on one worker (--dist loadscope).
test_notebooks() {
  local dist=()
  [ "$JOBS" -gt 1 ] && dist=(--dist loadscope)
  parallel python -m pytest notebooks --nbval --nbval-sanitize-with tests/sanitize.cfg --nbval-cell-timeout=900 \
    "${dist[@]}" -p no:cacheprovider "$@"
}

# `pytest -k ...` may select tests on one side only: "nothing collected" (exit 5) fails only if it is both.
run_test() {
  local units=0 notebooks=0
  echo "course.sh: unit tests and the architecture test"
  test_units "$@" || units=$?
  [ "$units" = 0 ] || [ "$units" = 5 ] || exit "$units"
  echo "course.sh: every notebook under strict nbval"
  test_notebooks "$@" || notebooks=$?
  [ "$notebooks" = 0 ] || [ "$notebooks" = 5 ] || exit "$notebooks"
  [ "$units$notebooks" != 55 ] || { echo "course.sh: no test selected" >&2; exit 5; }
}

case "${1:-}" in
  setup) setup ;;
  lab)
    setup
    root_flag=(); [ "$(id -u)" = 0 ] && root_flag=(--allow-root)  # JupyterLab refuses root without it
    exec jupyter lab --notebook-dir=. "${root_flag[@]}" notebooks/00_setup.ipynb "${@:2}" ;;
  test)
    setup
    keep_bytecode
    run_test "${@:2}" ;;
  test-units)
    setup
    keep_bytecode
    test_units "${@:2}" ;;
  test-notebooks)
    setup
    keep_bytecode
    test_notebooks "${@:2}" ;;
  execute)
    setup
    keep_bytecode
    shift
    [ $# -gt 0 ] || set -- notebooks/*.ipynb
    for nb in "$@"; do
      echo "course.sh: executing $nb"
      jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 "$nb"
    done
    python tools/notebook_tools.py clean "$@" ;;
  gpu-kit)
    exec bash tools/gpu_kit.sh "${@:2}" ;;
  gpu-check)
    setup
    exec python tools/gpu_check.py "${@:2}" ;;
  *)
    echo "usage: bash course.sh {lab|test|execute [notebook ...]|setup|test-units|test-notebooks|gpu-check [--dry-run]|gpu-kit} [option ...]" >&2
    exit 2 ;;
esac
