#!/usr/bin/env bash
# The GPU check's wheel kit: what an offline GPU machine needs, beside the repository, to run tools/gpu_check.py.
#
#   bash tools/gpu_kit.sh [--wheel-dir .gpu_kit] [--cuda 13.0] [--skip-download] [--without NAME ...] [--help]
#
# The machine it is made for (this workplace's lent GPU machine, 'nvidia-h200'; see the table in
# /work/.library/device/KINDS.md): Python 3.12 on manylinux x86-64, torch 2.11 (CUDA 13.0), transformers 5.17,
# peft, accelerate 1.15 and some 200 more packages, but no trl, bitsandbytes, datasets, nbclient or ipykernel,
# and no internet. What runs there travels with the repository: 64 MiB in all, tracked files included.
#
# What the script does:
#   1. Downloads (pip download, binary wheels only, for CPython 3.12 on manylinux x86-64) the packages of
#      requirements.txt at the versions it pins (transformers too: 5.17 is not what CI tests), the notebook
#      runner (nbclient, nbformat, ipykernel, at the versions installed in .venv, which CI runs), and every
#      dependency of those that the machine lacks, into --wheel-dir (ignored by git). Dependencies are walked
#      from each wheel's METADATA; a package the machine already has (PRESENT below) is not carried, except
#      where its version there is known not to satisfy a requirement. Never carried: torch, triton, nvidia-*,
#      cuda-* (the machine's CUDA build of torch is the one to test; a CUDA stack would not fit anyway).
#   2. Slims bitsandbytes: its wheel holds a library for every CUDA, ROCm and XPU version (43 MB); the slim
#      wheel keeps the Python code, libbitsandbytes_cpu.so and the one libbitsandbytes_cudaNNN.so that --cuda
#      names (default 13.0: libbitsandbytes_cuda130.so), with its RECORD rewritten to match.
#   3. Measures what would travel (the repository's tracked and untracked-not-ignored files, plus the kit) and
#      fails (exit 1) above --limit-mib (default 64).
#   4. Prints the lines to run on the GPU machine, from the repository's root.
#
# Left out, so that the kit fits (measured: with them, repository + kit came to 64.6 MiB, over the limit):
#   debugpy (3.8 MiB), ipykernel's optional debugger: ipykernel runs without it (it imports it in a try block);
#   widgetsnbextension (2.1 MiB) and jupyterlab-widgets (0.2 MiB): ipywidgets' JavaScript for the notebook
#   front ends, never imported by a kernel. Nothing the check runs needs them.
# Not carried because the machine has them: pyarrow (~40 MB, which datasets needs), pandas and the rest of
# PRESENT below. If the machine's pyarrow is older than datasets wants, `import datasets` fails there: then
# tools/gpu_check.py skips, with that reason, every notebook that needs datasets (utils.quiet imports it), and
# the measured steps still run. --without NAME leaves out more, under the same rule: gpu_check.py skips
# whatever imports a missing package and says so.
#
# Options:
#   --wheel-dir DIR    where the wheels go (default: .gpu_kit in the repository, ignored by git)
#   --cuda X.Y         the CUDA version whose bitsandbytes library is kept (default: 13.0, torch 2.11+cu130)
#   --skip-download    do not download: slim and measure what is in --wheel-dir (offline; the tests use it)
#   --without NAME     do not carry NAME (repeatable)
#   --limit-mib N      the size limit of repository + kit (default: 64)
#   --repo DIR         the git checkout that travels with the kit (default: this repository)
#   --target DIR       where the printed install line installs the wheels on the GPU machine (default: /tmp/site)
# Environment: PYTHON, the interpreter that runs pip and the steps above (default: .venv/bin/python, else
# python3; it needs pip and packaging).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

WHEEL_DIR=$ROOT/.gpu_kit
CUDA=13.0
SKIP_DOWNLOAD=0
LIMIT_MIB=64
REPO=$ROOT
TARGET=/tmp/site
WITHOUT=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --wheel-dir) WHEEL_DIR=${2:?--wheel-dir needs a folder}; shift 2 ;;
    --cuda) CUDA=${2:?--cuda needs a version such as 13.0}; shift 2 ;;
    --skip-download) SKIP_DOWNLOAD=1; shift ;;
    --without) WITHOUT+=("${2:?--without needs a package name}"); shift 2 ;;
    --limit-mib) LIMIT_MIB=${2:?--limit-mib needs a number}; shift 2 ;;
    --repo) REPO=${2:?--repo needs a folder}; shift 2 ;;
    --target) TARGET=${2:?--target needs a folder}; shift 2 ;;
    *) echo "gpu_kit: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $CUDA =~ ^[0-9]+\.[0-9]+$ ]] || { echo "gpu_kit: --cuda takes a version such as 13.0 or 12.8, not '$CUDA'" >&2; exit 2; }
[[ $LIMIT_MIB =~ ^[0-9]+$ ]] || { echo "gpu_kit: --limit-mib takes a whole number of MiB, not '$LIMIT_MIB'" >&2; exit 2; }
git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 || { echo "gpu_kit: --repo $REPO is not a git checkout" >&2; exit 2; }
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$WHEEL_DIR"
WHEEL_DIR=$(cd "$WHEEL_DIR" && pwd)

# Everything below is Python (wheel metadata, zip files, hashes); bash only passes the options on.
exec "$PYTHON" - "$ROOT" "$WHEEL_DIR" "$CUDA" "$SKIP_DOWNLOAD" "$LIMIT_MIB" "$REPO" "$TARGET" ${WITHOUT[@]+"${WITHOUT[@]}"} <<'PYTHON_END'
from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT, WHEEL_DIR, CUDA = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
SKIP_DOWNLOAD, LIMIT_MIB, REPO, TARGET = sys.argv[4] == "1", int(sys.argv[5]), Path(sys.argv[6]), sys.argv[7]
MiB = 1 << 20
# Left out by default, measured (wheel for CPython 3.12, 2026-12): never imported by a notebook run, and without
# them the kit fits with room to spare.
LEFT_OUT = {
    "debugpy": "3.8 MiB; ipykernel's optional debugger (ipykernel/debugger.py imports it in a try block)",
    "widgetsnbextension": "2.1 MiB; ipywidgets' JavaScript for the classic notebook front end, never imported",
    "jupyterlab-widgets": "0.2 MiB; ipywidgets' JavaScript for JupyterLab, never imported",
}
WITHOUT = set(LEFT_OUT) | {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[8:]}

PYTHON_VERSION = "3.12"
# pip matches manylinux tags exactly: every glibc up to the machine's (Ubuntu 24.04: 2.39).
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64",
             *(f"manylinux_2_{n}_x86_64" for n in range(5, 40))]
MARKER_ENV = {"python_version": PYTHON_VERSION, "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}
# Never carried: the machine's own CUDA build of torch is what the check tests, and these are gigabytes.
NEVER = ("torch", "triton", "nvidia-", "cuda-")
# The notebook runner, beside requirements.txt: what tools/gpu_check.py executes notebooks with.
RUNNER = ("nbclient", "nbformat", "ipykernel")

# Already on the machine: the package list of the 'cuda' image in /work/.library/device/KINDS.md (read on a
# machine on 2026-11-17), with the versions its 'pip list' row gives (None: listed without a version).
# A requirement on a package with a known version is checked against it (not satisfied: the package is carried);
# one with an unknown version is assumed satisfied and listed at the end, to check there with `pip show`.
KNOWN_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                  "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0", "triton": "3.6.0",
                  "sentencepiece": "0.2.2", "tiktoken": "0.14.0", "torchvision": "0.26.0"}
PRESENT_NAMES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split()


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


PRESENT = {canonical(n): KNOWN_VERSIONS.get(canonical(n)) for n in PRESENT_NAMES}


def never_carried(name: str) -> bool:
    return name in ("torch", "triton") or name.startswith(("nvidia-", "cuda-"))


def say(message: str) -> None:
    print(f"gpu_kit: {message}", flush=True)


def fail(message: str, code: int = 1) -> None:
    print(f"gpu_kit: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# ------------------------------------------------------------------------------------------------ wheels

def wheel_name_version(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name: NAME-VERSION-...whl."""
    parts = path.name[:-4].split("-")
    if len(parts) < 5:
        fail(f"{path.name} is not a wheel file name (NAME-VERSION-[BUILD-]PY-ABI-PLATFORM.whl)")
    return canonical(parts[0]), parts[1]


def wheel_requirements(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(meta) != 1:
            fail(f"{path.name}: expected one *.dist-info/METADATA, found {len(meta)}")
        text = z.read(meta[0]).decode("utf-8")
    return Parser().parsestr(text, headersonly=True).get_all("Requires-Dist") or []


def wheels_by_name(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.whl")):
        found.setdefault(wheel_name_version(path)[0], []).append(path)
    return found


# ------------------------------------------------------------------------------------------------ download

def root_requirements() -> list[str]:
    """requirements.txt's lines (torch left out: the machine's CUDA build is the one to test), plus the runner,
    pinned to the versions installed here where there are (what CI runs)."""
    import importlib.metadata as metadata

    lines = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    for name in RUNNER:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(name)
    return lines


def pip_download(requirements: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           PYTHON_VERSION, "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)),
           "--dest", str(dest), "--quiet", *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        noise = "is ignored: it is neither a file nor a directory"  # local extra indexes that lack a package
        err = "\n".join(line for line in proc.stderr.splitlines() if noise not in line)
        fail(f"pip download failed for {' '.join(requirements)}:\n{err}")


def download() -> list[tuple[str, str, str]]:
    """Download the roots and the dependencies the machine lacks; return the (name, spec, wanted by) assumed there."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    env = {**default_environment(), **MARKER_ENV}
    specs: dict[str, SpecifierSet] = {}
    extras: dict[str, set[str]] = {}
    assumed: list[tuple[str, str, str]] = []
    left_out: list[tuple[str, str]] = []

    def want(line: str, parent: str, parent_extras: set[str], root: bool) -> None:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in (parent_extras or {""})):
            return
        name = canonical(req.name)
        if name in WITHOUT:
            left_out.append((name, parent))
            return
        if name in PRESENT and not (root and "==" in str(req.specifier) and PRESENT[name] is None):
            known = PRESENT[name]
            if known is None:
                assumed.append((name, str(req.specifier) or "any", parent))
                return
            if req.specifier.contains(Version(known), prereleases=True):
                return
            if never_carried(name):
                fail(f"{parent} needs {name}{req.specifier}, but the machine has {name} {known}, which this kit "
                     "never carries: pin a version of the package that works with it")
            say(f"{parent} needs {name}{req.specifier}; the machine has {known}: carried")
        elif never_carried(name):
            fail(f"{parent} needs {name}, which is neither on the machine nor carried by this kit")
        specs[name] = specs.get(name, SpecifierSet()) & req.specifier
        extras.setdefault(name, set()).update(req.extras)

    for line in root_requirements():
        want(line, "requirements", set(), root=True)
    with tempfile.TemporaryDirectory(prefix="gpu_kit_") as tmp:
        got: dict[str, tuple[str, Path]] = {}
        for _round in range(20):
            todo = [n for n in specs if n not in got or not specs[n].contains(Version(got[n][0]), prereleases=True)]
            if not todo:
                break
            say(f"downloading {len(todo)} wheel(s): {', '.join(sorted(todo))}")
            batch = Path(tmp) / f"round{_round}"
            batch.mkdir()
            pip_download([f"{n}{specs[n]}" for n in todo], batch)
            for path in batch.glob("*.whl"):
                name, version = wheel_name_version(path)
                got[name] = (version, path)
                for line in wheel_requirements(path):
                    want(line, f"{name} {version}", extras.get(name, set()), root=False)
        else:
            fail("the dependencies did not settle after 20 rounds of downloads")
        for old in WHEEL_DIR.glob("*.whl"):
            old.unlink()
        for name, (version, path) in sorted(got.items()):
            path.replace(WHEEL_DIR / path.name)
    for name, parent in sorted(set(left_out)):
        say(f"left out: {name} (wanted by {parent}): {LEFT_OUT.get(name, '--without')}")
    return assumed


# ------------------------------------------------------------------------------------------------ slim

def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim_bitsandbytes(path: Path, cuda: str) -> None:
    """Rewrite the bitsandbytes wheel in place, keeping only its CPU library and the CUDA one for ``cuda``."""
    keep_lib = f"libbitsandbytes_cuda{cuda.replace('.', '')}.so"
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        libs = [i.filename for i in infos if re.search(r"/libbitsandbytes_\w+\.so$", i.filename)]
        kept = [n for n in libs if n.endswith("/libbitsandbytes_cpu.so") or n.endswith("/" + keep_lib)]
        dropped = sorted(set(libs) - set(kept))
        if not any(n.endswith("/" + keep_lib) for n in libs):
            cudas = sorted(re.sub(r".*libbitsandbytes_cuda(\d+)\.so$", r"\1", n) for n in libs if "_cuda" in n)
            if not cudas:  # already slimmed for another version, or not a bitsandbytes wheel with CUDA libraries
                fail(f"{path.name} holds no libbitsandbytes_cuda*.so; download it again (run without --skip-download)")
            fail(f"{path.name} has no {keep_lib}: its CUDA libraries are for "
                 f"{', '.join(c[:-1] + '.' + c[-1] for c in cudas)}; pick one of those with --cuda")
        if not dropped:
            say(f"{path.name}: already slim ({keep_lib} and the CPU library)")
            return
        records = [i.filename for i in infos if i.filename.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            fail(f"{path.name}: expected one *.dist-info/RECORD, found {len(records)}")
        members = {i.filename: z.read(i.filename) for i in infos if i.filename not in dropped}
    rows = list(csv.reader(io.StringIO(members[records[0]].decode("utf-8"))))
    rows = [r for r in rows if r and r[0] not in dropped]
    for r in rows:  # every kept file's hash and size, as the wheel format (PEP 427/376) asks; RECORD itself has none
        if r[0] != records[0]:
            if r[0] not in members:
                fail(f"{path.name}: RECORD lists {r[0]}, which the wheel does not hold")
            r[1:3] = [record_hash(members[r[0]]), str(len(members[r[0]]))]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    members[records[0]] = out.getvalue().encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in infos:
            if info.filename in members:
                new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                new.external_attr = info.external_attr
                new.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(new, members[info.filename])
    before = path.stat().st_size
    tmp.replace(path)
    say(f"slimmed {path.name}: kept {keep_lib} and the CPU library, dropped {len(dropped)} libraries "
        f"({before / MiB:.1f} -> {path.stat().st_size / MiB:.1f} MiB)")


# ------------------------------------------------------------------------------------------------ size

def repository_bytes(repo: Path) -> tuple[int, int]:
    """(tracked, untracked and not ignored) bytes of the checkout: what travels besides the kit."""
    def total(args: list[str]) -> int:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", *args], capture_output=True, check=True).stdout
        paths = [repo / p.decode() for p in out.split(b"\0") if p]
        return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())
    return total([]), total(["--others", "--exclude-standard"])


def main() -> None:
    assumed = [] if SKIP_DOWNLOAD else download()
    wheels = wheels_by_name(WHEEL_DIR)
    if not wheels:
        fail(f"no wheels in {WHEEL_DIR}" + (" (--skip-download: download them first)" if SKIP_DOWNLOAD else ""))
    doubles = {n: [p.name for p in ps] for n, ps in wheels.items() if len(ps) > 1}
    if doubles:  # pip --no-deps would install both and stop
        fail("more than one wheel of " + "; ".join(f"{n}: {', '.join(ps)}" for n, ps in doubles.items())
             + f": keep one of each in {WHEEL_DIR}")
    for name in sorted(WITHOUT & set(wheels)):
        for p in wheels.pop(name):
            p.unlink()
        say(f"removed {name} (--without)")
    if "bitsandbytes" in wheels:
        slim_bitsandbytes(wheels["bitsandbytes"][0], CUDA)
    else:
        say("no bitsandbytes wheel: the QLoRA steps and the notebooks that import it will be skipped there")
    sizes = {p.name: p.stat().st_size for ps in wheels.values() for p in ps}
    print(f"\n{'wheel':<72}{'MiB':>8}")
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"{name:<72}{size / MiB:>8.2f}")
    kit = sum(sizes.values())
    tracked, untracked = repository_bytes(REPO)
    total = kit + tracked + untracked
    limit = LIMIT_MIB * MiB
    print(f"\nkit: {len(sizes)} wheels, {kit / MiB:.2f} MiB in {WHEEL_DIR}")
    print(f"repository: {tracked / MiB:.2f} MiB tracked + {untracked / MiB:.2f} MiB untracked, not ignored")
    print(f"total: {total / MiB:.2f} MiB ({total} bytes) of {LIMIT_MIB} MiB ({limit} bytes); "
          f"{(limit - total) / MiB:+.2f} MiB to spare")
    if assumed:
        print("\nassumed on the machine (listed there without a version; check with `python3 -m pip show NAME`):")
        for name, spec, parent in sorted(set(assumed)):
            print(f"  {name} {spec}  (wanted by {parent})")
    if total > limit:
        fail(f"too big: the repository and the kit come to {total / MiB:.2f} MiB, over the {LIMIT_MIB} MiB that "
             f"travels. Leave a package out (--without NAME: its notebooks are skipped there), or shrink the "
             f"repository.")
    try:
        rel = WHEEL_DIR.relative_to(REPO.resolve())
    except ValueError:
        rel = WHEEL_DIR
    print("\nOn the GPU machine, from the repository's root (the kit folder carried along):")
    print(f"  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
          f"--target {TARGET} {rel}/*.whl && export PYTHONPATH={TARGET}")
    print("  python3 tools/gpu_check.py    # --dtype fp16 for the T4 path; --help for the rest")


main()
PYTHON_END
