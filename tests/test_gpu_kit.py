"""The GPU check's wheel kit (tools/gpu_kit.sh), offline: its bitsandbytes slimming and its size check.

Each test builds a fake wheel folder (tiny wheels of chosen sizes, a fake bitsandbytes wheel with a library for
several CUDA versions) and a throwaway git checkout of known size, then runs the script with --skip-download,
so no network is used. Downloading is what `bash tools/gpu_kit.sh` does by itself (run by hand; see its --help).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_kit.sh"
MiB = 1 << 20
BNB = "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
BNB_LIBS = ("cpu", "cuda118", "cuda124", "cuda130", "cuda132", "rocm64", "xpu2025")


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, filename: str, files: dict[str, bytes]) -> Path:
    """A wheel with ``files`` plus its dist-info (METADATA, WHEEL, RECORD with every hash), stored uncompressed."""
    name, version = filename.split("-")[:2]
    info = f"{name}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: py3-none-any\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for path, data in files.items():
        writer.writerow([path, record_hash(data), len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    files[f"{info}/RECORD"] = out.getvalue().encode()
    path = folder / filename
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for member, data in files.items():
            z.writestr(member, data)
    return path


def fake_bitsandbytes(folder: Path) -> Path:
    libs = {f"bitsandbytes/libbitsandbytes_{v}.so": os.urandom(20_000) for v in BNB_LIBS}
    return make_wheel(folder, BNB, {"bitsandbytes/__init__.py": b"__version__ = '0.50.2'\n",
                                    "bitsandbytes/functional.py": b"x = 1\n", **libs})


def blob_wheel(folder: Path, name: str, size: int) -> Path:
    """A wheel of about ``size`` bytes (random, so stored as is)."""
    return make_wheel(folder, f"{name}-1.0-py3-none-any.whl", {f"{name}/blob.bin": os.urandom(size)})


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git checkout with 1 MiB tracked, 0.5 MiB untracked and 5 MiB ignored (which does not travel)."""
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "tracked.bin").write_bytes(os.urandom(MiB))
    (path / "untracked.bin").write_bytes(os.urandom(MiB // 2))
    (path / ".gitignore").write_text("ignored.bin\n")
    (path / "ignored.bin").write_bytes(os.urandom(5 * MiB))
    subprocess.run(["git", "-C", str(path), "add", "tracked.bin", ".gitignore"], check=True)
    return path


def repo_bytes(repo: Path) -> int:
    return sum((repo / n).stat().st_size for n in ("tracked.bin", "untracked.bin", ".gitignore"))


def kit(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120)


def members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        assert z.testzip() is None
        return {n: z.read(n) for n in z.namelist()}


def check_record(files: dict[str, bytes]) -> list[str]:
    """Assert the wheel's RECORD lists every member once, with its hash and size; return the listed paths."""
    (record,) = [n for n in files if n.endswith(".dist-info/RECORD")]
    rows = list(csv.reader(io.StringIO(files[record].decode())))
    assert sorted(r[0] for r in rows) == sorted(files)
    for path, digest, size in rows:
        if path != record:
            assert digest == record_hash(files[path]) and int(size) == len(files[path]), path
    return [r[0] for r in rows]


def test_slims_bitsandbytes_to_one_cuda_library(tmp_path, repo):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = fake_bitsandbytes(wheels)
    before = members(wheel)
    proc = kit("--skip-download", "--wheel-dir", wheels, "--repo", repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = members(wheel)
    libs = sorted(n for n in files if n.endswith(".so"))
    assert libs == ["bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda130.so"]
    for name in files:  # what is kept is kept byte for byte; only RECORD changes
        if not name.endswith("RECORD"):
            assert files[name] == before[name], name
    assert len(check_record(files)) == len(before) - (len(BNB_LIBS) - 2)
    assert "dropped 5 libraries" in proc.stdout
    # a second run finds it slim and leaves it alone
    again = kit("--skip-download", "--wheel-dir", wheels, "--repo", repo)
    assert again.returncode == 0 and "already slim" in again.stdout and members(wheel) == files


def test_cuda_flag_picks_the_library(tmp_path, repo):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = fake_bitsandbytes(wheels)
    proc = kit("--skip-download", "--wheel-dir", wheels, "--repo", repo, "--cuda", "12.4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = members(wheel)
    assert sorted(n for n in files if n.endswith(".so")) == ["bitsandbytes/libbitsandbytes_cpu.so",
                                                             "bitsandbytes/libbitsandbytes_cuda124.so"]
    check_record(files)


def test_a_cuda_version_without_library_is_a_clear_error(tmp_path, repo):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = fake_bitsandbytes(wheels)
    before = wheel.read_bytes()
    proc = kit("--skip-download", "--wheel-dir", wheels, "--repo", repo, "--cuda", "12.9")
    assert proc.returncode == 1
    assert "no libbitsandbytes_cuda129.so" in proc.stderr and "11.8, 12.4, 13.0, 13.2" in proc.stderr
    assert wheel.read_bytes() == before


def test_size_check_counts_tracked_and_untracked_files_and_the_kit(tmp_path, repo):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_bitsandbytes(wheels)
    blob_wheel(wheels, "big", MiB // 4)
    blob_wheel(wheels, "small", 1000)
    proc = kit("--skip-download", "--wheel-dir", wheels, "--repo", repo, "--limit-mib", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kit_bytes = sum(p.stat().st_size for p in wheels.glob("*.whl"))  # after slimming
    total = kit_bytes + repo_bytes(repo)  # ignored.bin (5 MiB) does not travel
    assert 1.5 * MiB < total < 2 * MiB
    assert f"total: {total / MiB:.2f} MiB ({total} bytes) of 2 MiB ({2 * MiB} bytes)" in proc.stdout
    assert "pip install -q --no-index --no-deps" in proc.stdout and "--target /tmp/site" in proc.stdout
    assert "export PYTHONPATH=/tmp/site" in proc.stdout and "tools/gpu_check.py" in proc.stdout
    # half a MiB more and it no longer fits
    blob_wheel(wheels, "extra", MiB // 2)
    over = kit("--skip-download", "--wheel-dir", wheels, "--repo", repo, "--limit-mib", "2")
    assert over.returncode == 1
    assert "too big" in over.stderr and "over the 2 MiB" in over.stderr and "--without" in over.stderr
    assert "pip install" not in over.stdout


def test_without_removes_a_wheel(tmp_path, repo):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_bitsandbytes(wheels)
    blob_wheel(wheels, "debugpy", 2000)
    blob_wheel(wheels, "keep_me", 2000)
    proc = kit("--skip-download", "--wheel-dir", wheels, "--repo", repo, "--without", "keep-me")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # debugpy is left out by default (ipykernel's optional debugger), keep_me by the option (names compare canonically)
    assert sorted(p.name for p in wheels.glob("*.whl")) == [BNB]
    assert "removed debugpy" in proc.stdout and "removed keep-me" in proc.stdout


def test_two_versions_of_a_package_are_refused(tmp_path, repo):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "pkg-1.0-py3-none-any.whl", {"pkg/__init__.py": b""})
    make_wheel(wheels, "pkg-2.0-py3-none-any.whl", {"pkg/__init__.py": b""})
    proc = kit("--skip-download", "--wheel-dir", wheels, "--repo", repo)
    assert proc.returncode == 1 and "more than one wheel of pkg" in proc.stderr


def test_empty_folder_and_bad_options_are_clear_errors(tmp_path, repo):
    empty = tmp_path / "empty"
    proc = kit("--skip-download", "--wheel-dir", empty, "--repo", repo)
    assert proc.returncode == 1 and "no wheels in" in proc.stderr and "download them first" in proc.stderr
    for args, message in [(["--cuda", "thirteen"], "--cuda takes a version"), (["--frobnicate"], "unknown option"),
                          (["--limit-mib", "6x"], "--limit-mib takes a whole number"),
                          (["--repo", tmp_path], "not a git checkout")]:
        proc = kit("--skip-download", "--wheel-dir", empty, *args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_help_says_what_is_left_out_and_assumed():
    proc = kit("--help")
    assert proc.returncode == 0
    for words in ("--skip-download", "--wheel-dir", "--cuda", "Left out", "debugpy", "pyarrow", "gpu_check.py"):
        assert words in proc.stdout, words
