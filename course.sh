#!/usr/bin/env bash
# The course's two commands (see README.md, Quickstart):
#   bash course.sh lab    set everything up, then open the course in JupyterLab
#   bash course.sh test   set everything up, then run the unit tests and every notebook under nbval
# and, for maintainers:
#   bash course.sh execute [notebooks/NN_*.ipynb ...]   re-run notebooks in place and clean their metadata
#   bash course.sh setup                                only set up
#   bash course.sh gpu-check [--dry-run] [options]      every notebook and measured training steps on a CUDA GPU,
#                                                       results in gpu_check.json (tools/gpu_check.py --help)
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
  if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "course.sh: NVIDIA GPU found: installing torch $TORCH_VERSION with CUDA"
      python -m pip install -q "torch==$TORCH_VERSION"
    else
      echo "course.sh: no NVIDIA GPU: installing the CPU build of torch $TORCH_VERSION"
      # "+cpu" matches only CPU builds: from the indexes pip already knows (a local wheel, a mirror),
      # else from PyTorch's CPU index. Never the multi-GB CUDA build.
      python -m pip install -q "torch==$TORCH_VERSION+cpu" 2>/dev/null \
        || python -m pip install -q "torch==$TORCH_VERSION+cpu" \
             --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
    fi
  fi
  python -m pip install -q -r requirements-dev.txt
  python -c "import torch; print('course.sh: torch', torch.__version__, '| CUDA' if torch.cuda.is_available() else '| CPU')"
}

case "${1:-}" in
  setup) setup ;;
  lab)
    setup
    root_flag=(); [ "$(id -u)" = 0 ] && root_flag=(--allow-root)  # JupyterLab refuses root without it
    exec jupyter lab --notebook-dir=. "${root_flag[@]}" notebooks/00_setup.ipynb "${@:2}" ;;
  test)
    setup
    # Unit tests, the JupyterLab check, and every notebook under strict nbval (outputs compared).
    exec python -m pytest tests notebooks --nbval --nbval-sanitize-with tests/sanitize.cfg \
      --nbval-cell-timeout=900 -p no:cacheprovider "${@:2}" ;;
  execute)
    setup
    shift
    [ $# -gt 0 ] || set -- notebooks/*.ipynb
    for nb in "$@"; do
      echo "course.sh: executing $nb"
      jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 "$nb"
    done
    python tools/notebook_tools.py clean "$@" ;;
  gpu-check)
    setup
    exec python tools/gpu_check.py "${@:2}" ;;
  *)
    echo "usage: bash course.sh {lab|test|execute [notebook ...]|setup|gpu-check [--dry-run] [option ...]}" >&2; exit 2 ;;
esac
