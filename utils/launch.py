"""Launching ranks: run a script on ``nproc`` processes with PyTorch's own launcher, and see that none is left.

:func:`torchrun` runs ``python -m torch.distributed.run --standalone`` (what the ``torchrun`` command and
``accelerate launch`` run), one thread per rank, with a timeout, so that a failed or hung rank ends in a clear
:class:`RankFailure` (with the failing rank's traceback and last lines) instead of a notebook that never returns;
a rank killed by a signal (:class:`RankKilled`) is launched again, once by default. :func:`leftover_processes`
finds any process of a launch that outlived it. Linux (``/proc``) for the process tree; notebook 09 uses it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path


class RankFailure(RuntimeError):
    """A rank of a :func:`torchrun` launch failed, or the launch ran past its timeout."""


class RankKilled(RankFailure):
    """A rank of a :func:`torchrun` launch was killed by a signal (e.g. ``SIGABRT``), not by a Python exception."""

    def __init__(self, message: str, summary: str):
        super().__init__(message)
        self.summary = summary


def _root_cause(output: str) -> str:
    """The failing rank's part of torchrun's report (its traceback), without times, hosts and pids."""
    block = output.split("Root Cause (first observed failure):", 1)[-1]
    keep = [line for line in block.splitlines()
            if not re.match(r"\s*(time|host|error_file)\s*:", line) and not set(line.strip()) <= set("=-")]
    return "\n".join(keep[-30:]).strip()


def _rank_log_tail(log_dir: str | os.PathLike, cause: str, lines: int = 20) -> str:
    """The last ``lines`` lines the failing rank (``local_rank`` in ``cause``) wrote to stderr, then stdout.

    torchrun's report names a rank killed by a signal (a C++ abort in a communication thread, say) but has no
    traceback for it: what the rank printed before it died is the only clue, so we show it.
    """
    found = re.search(r"local_rank:\s*(\d+)", cause)
    if not found:
        return ""
    tails = []
    for stream in ("stderr", "stdout"):
        for log in sorted(Path(log_dir).rglob(f"attempt_*/{found.group(1)}/{stream}.log")):
            text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            if text:
                tails.append(f"--- its {stream} (last lines) ---\n" + "\n".join(text[-lines:]))
    return "\n".join(tails)


def torchrun(script: str | os.PathLike, nproc: int, *args: str, timeout: float = 300,
             threads: int = 1, relaunch_on_signal: int = 1) -> str:
    """Run ``script`` on ``nproc`` ranks with ``python -m torch.distributed.run --standalone`` and return its output.

    Every rank gets ``OMP_NUM_THREADS=threads``. ``--standalone`` picks a free port for the rendezvous,
    so launches never collide on a fixed port. The ranks' output is returned (each line prefixed by torchrun
    with its local rank, ``[default0]:``) and kept per rank in a temporary log folder. When a rank fails,
    torchrun stops the others; this raises :class:`RankFailure` with the failing rank's traceback (decorate
    the script's entry point with ``torch.distributed.elastic.multiprocessing.errors.record`` for it to be
    reported) and the last lines that rank wrote. A launch still running after ``timeout`` seconds is
    killed with all its ranks, and raises too.

    A rank *killed by a signal* (a C++ abort, which leaves no Python traceback; the course's CI has seen gloo
    ranks die so, by SIGABRT after a segmentation fault, on a busy 2-core machine) is not taken for an error of
    the script: the launch is repeated, up to
    ``relaunch_on_signal`` times, saying so on stderr, as torchrun's own ``--max-restarts`` would (which
    restarts on any failure, a bug in the script included). A Python exception or a timeout raises at once.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}.")
    script = Path(script)
    if not script.is_file():
        raise FileNotFoundError(f"No script {script}: write it first.")
    for attempt in range(relaunch_on_signal):
        try:
            return _launch(script, nproc, args, timeout, threads)
        except RankKilled as err:
            print(f"{script.name} on {nproc} ranks: {err.summary}; launching again "
                  f"({attempt + 1} of {relaunch_on_signal})", file=sys.stderr, flush=True)
    return _launch(script, nproc, args, timeout, threads)  # the last try: whatever it raises goes to the caller


def _launch(script: Path, nproc: int, args: Iterable[str], timeout: float, threads: int) -> str:
    """One torchrun launch of :func:`torchrun`: its output, or :class:`RankFailure` / :class:`RankKilled`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="torchrun-logs-") as log_dir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--max-restarts=0", f"--log-dir={log_dir}", "--tee=3", str(script), *map(str, args)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except BaseException as err:  # the timeout, or an interrupted kernel: no rank may outlive the call
            output = _stop(proc)
            if not isinstance(err, subprocess.TimeoutExpired):
                raise
            tail = "\n".join(output.splitlines()[-15:])
            raise RankFailure(f"{script.name} on {nproc} ranks did not finish within {timeout:.0f} s and was killed "
                              "with all its ranks. A rank that waits in a collective (all-gather, reduce-scatter) "
                              f"for a rank that died or never got there hangs until then. Last output:\n{tail}") from None
        if proc.returncode != 0:
            cause = _root_cause(output)
            logs = _rank_log_tail(log_dir, cause)
            message = (f"{script.name} on {nproc} ranks failed (torchrun exit status {proc.returncode}); "
                       f"the other ranks were stopped. The failing rank reported:\n{cause}" + (f"\n{logs}" if logs else ""))
            killed = re.search(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*-(\d+)", cause, re.DOTALL)
            if killed:
                name = signal.Signals(int(killed.group(2))).name if int(killed.group(2)) in signal.valid_signals() else killed.group(2)
                raise RankKilled(message, f"rank {killed.group(1)} was killed by {name}")
            raise RankFailure(message)
    return output


def _children() -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` of every process, from ``/proc`` (Linux; elsewhere empty)."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop(proc: subprocess.Popen) -> str:
    """Stop a launch that ran too long, with every rank, and return what it printed.

    torchrun starts each rank in a session of its own, so killing the launcher's process group is not
    enough: SIGTERM first (torchrun then stops its ranks), then SIGKILL to whatever is left of the tree.
    """
    ranks = _descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for pid in [proc.pid, *ranks, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # a grandchild we could not see still holds the pipe
        proc.stdout.close()
        output = ""
    return output or ""


def leftover_processes(marker: str) -> list[int]:
    """Process ids whose command line contains ``marker`` (e.g. a script's path), this process excluded.

    Reads ``/proc`` (Linux); elsewhere returns an empty list.
    """
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return sorted(found)
