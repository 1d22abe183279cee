"""Sharding across data-parallel ranks (ZeRO stages, FSDP): the per-rank arithmetic, and the tools to measure it.

Three kinds of helper:

- **arithmetic** (:func:`per_rank_static`, :func:`sharded_estimate`): what one rank (one GPU) holds when
  ``world`` ranks train together, by ZeRO stage — 0: nothing sharded (DDP), 1: optimizer states,
  2: + gradients, 3: + parameters (FSDP's ``FULL_SHARD``, ``fully_shard``) — built on
  :func:`utils.estimate` for one GPU (Rajbhandari et al. 2020, ZeRO, §5).
- **measurement** (:func:`local_bytes`, :func:`local_parameter_bytes`, :func:`local_gradient_bytes`,
  :func:`local_optimizer_state_bytes`, :func:`quant_constant_bytes`): the bytes a rank really holds, from
  the *local* shard of every ``DTensor`` that FSDP2 made (``DTensor.to_local()``), counted like
  :func:`utils.unique_bytes` (each storage once).
- **launching** (:func:`torchrun`, :func:`leftover_processes`): run a script on ``nproc`` ranks with
  PyTorch's own launcher, ``torch.distributed.run`` (torchrun), one thread per rank, with a timeout, so
  that a failed or hung rank ends in a clear ``RankFailure`` instead of a notebook that never returns.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .memory import unique_bytes

ZERO_STAGES = {
    0: ("DDP", "nothing: every rank holds weights, gradients and optimizer states"),
    1: ("ZeRO-1", "optimizer states"),
    2: ("ZeRO-2", "optimizer states + gradients"),
    3: ("ZeRO-3 / FSDP", "optimizer states + gradients + parameters"),
}
GATHERED_LAYERS = 2  # FSDP2 unshards the layer it computes and prefetches the next one (forward and backward)


# --------------------------------------------------------------------------------------------------
# Measuring what a rank holds
# --------------------------------------------------------------------------------------------------

def to_local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` that lives on this rank: ``t.to_local()`` for a ``DTensor``, else ``t`` itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the local shards of ``tensors`` (plain tensors count whole), each storage once."""
    return unique_bytes(to_local(t) for t in tensors)


def local_parameter_bytes(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Bytes of this rank's shards of the model's parameters (quantization constants: see :func:`quant_constant_bytes`)."""
    return local_bytes(p for p in model.parameters() if p.requires_grad or not trainable_only)


def local_gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes of this rank's shards of the ``.grad`` tensors that exist now."""
    return local_bytes(p.grad for p in model.parameters() if p.grad is not None)


def local_optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of this rank's shards of the optimizer's states (AdamW: two moments per parameter, and ``step``)."""
    return local_bytes(t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor))


def quant_constant_bytes(model: torch.nn.Module) -> int:
    """Bytes of the bitsandbytes quantization constants (absmax, nested absmax, code tables) of the 4-bit layers.

    They are attributes of each layer's ``quant_state``, not parameters, so FSDP does not shard them: every
    rank keeps all of them.
    """
    tensors = []
    for module in model.modules():
        qs = getattr(module, "quant_state", None)
        while qs is not None:
            tensors += [t for t in (getattr(qs, "absmax", None), getattr(qs, "code", None)) if isinstance(t, torch.Tensor)]
            qs = getattr(qs, "state2", None)
    return unique_bytes(tensors)


# --------------------------------------------------------------------------------------------------
# Arithmetic: per-rank bytes by ZeRO stage, on top of the one-GPU estimate
# --------------------------------------------------------------------------------------------------

def _check_world_stage(world: int, stage: int) -> None:
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world (the number of ranks, one per GPU) must be a positive integer, got {world!r}.")
    if stage not in ZERO_STAGES:
        raise ValueError(f"Unknown ZeRO stage {stage!r}. Use one of {sorted(ZERO_STAGES)} "
                         "(0: DDP, 1: states, 2: + gradients, 3: + parameters, which is FSDP's full sharding).")


def per_rank_static(weights: int, gradients: int, optimizer_states: int, world: int, stage: int) -> dict[str, float]:
    """What one of ``world`` ranks holds of the three static parts under ZeRO ``stage``.

    Stage 1 divides the optimizer states by ``world``, stage 2 the gradients too, stage 3 the weights too.
    (An even split: FSDP pads a tensor whose first dimension does not divide evenly, which a measurement
    shows as a few bytes more.)
    """
    _check_world_stage(world, stage)
    return {"weights": weights / world if stage >= 3 else weights,
            "gradients": gradients / world if stage >= 2 else gradients,
            "optimizer states": optimizer_states / world if stage >= 1 else optimizer_states}


def _with_layers(config: Any, layers: int) -> Any:
    """A copy of ``config`` (ModelShape, mapping or transformers config) with ``layers`` decoder layers."""
    if dataclasses.is_dataclass(config) and hasattr(config, "layers"):
        return dataclasses.replace(config, layers=layers)
    if isinstance(config, Mapping):
        key = "num_hidden_layers" if "num_hidden_layers" in config else "layers"
        return {**config, key: layers}
    if hasattr(config, "num_hidden_layers"):
        import copy

        other = copy.deepcopy(config)
        other.num_hidden_layers = layers
        return other
    raise TypeError(f"Cannot read the number of layers of {type(config).__name__}: give a transformers config, "
                    "a mapping or a utils.estimator.ModelShape.")


def _layers(config: Any) -> int:
    if dataclasses.is_dataclass(config) and hasattr(config, "layers"):
        return config.layers
    get = config.get if isinstance(config, Mapping) else (lambda k, d=None: getattr(config, k, d))
    value = get("num_hidden_layers", get("layers", None))
    if not isinstance(value, int) or value < 2:
        raise ValueError("The config needs num_hidden_layers >= 2 to tell one layer's weights from the rest.")
    return value


@dataclass(frozen=True)
class ShardedEstimate:
    """Predicted memory of one training step on each of ``world`` GPUs (bytes per GPU unless named otherwise).

    ``weights``, ``gradients``, ``optimizer_states``: this GPU's part of the static memory (on the CPU
    when ``offload``); ``gathered``: the parameters FSDP all-gathers at once (stage 3 on 2+ ranks only:
    :data:`GATHERED_LAYERS` decoder layers, and the unsharded root: embeddings, final norm, output head);
    ``activations`` and ``temporaries``: as the one-GPU estimate has them at its peak (every rank runs its
    own micro-batch: data parallelism does not divide them); ``overhead``: the one-GPU estimate's stated
    allowance. ``cpu_ram``: what the offloaded shards of all ``world`` ranks take in the host's RAM.
    """

    world: int
    stage: int
    offload: bool
    weights: float
    gradients: float
    optimizer_states: float
    gathered: float
    activations: float
    temporaries: float
    overhead: float
    cpu_ram: float

    @property
    def per_gpu(self) -> float:
        """Bytes on each GPU at the step's peak: what is not offloaded, plus gathered, activations, temporaries, overhead."""
        static = 0 if self.offload else self.weights + self.gradients + self.optimizer_states
        return static + self.gathered + self.activations + self.temporaries + self.overhead


def sharded_estimate(config: Any, recipe: Any, world: int, stage: int = 3, offload: bool = False) -> ShardedEstimate:
    """Per-GPU memory of ``recipe`` on ``world`` GPUs under ZeRO ``stage``, from :func:`utils.estimate`.

    - The static parts at the one-GPU peak (its weights, optimizer states and the gradients held then) are
      divided as :func:`per_rank_static` says.
    - Stage 3 all-gathers parameters layer by layer: ``GATHERED_LAYERS`` layers' weights (one layer's weights
      is the estimate's weights minus those of the same model with one layer fewer) plus the weights outside
      the layers (the root module, which FSDP2 keeps unsharded from forward to backward).
    - ``offload`` (FSDP's ``offload_params``, stage 3 only) keeps the sharded weights, gradients and states in
      CPU RAM, where the optimizer step runs; the GPU holds what is gathered, the activations and temporaries.
    """
    from .estimator import estimate

    _check_world_stage(world, stage)
    if offload and stage != 3:
        raise ValueError("Parameter offload is FSDP's (stage 3): give stage=3, or offload=False.")
    one = estimate(config, recipe)
    parts = one.peak_parts
    static = per_rank_static(parts["weights"], parts["gradients"], parts["optimizer states"], world, stage)
    gathered = 0
    if stage == 3 and world > 1:  # one rank holds everything: nothing to gather
        layers = _layers(config)
        layer = one.weights - estimate(_with_layers(config, layers - 1), recipe).weights
        outside = one.weights - layers * layer
        gathered = min(GATHERED_LAYERS, layers) * layer + outside
    cpu_ram = world * sum(static.values()) if offload else 0
    return ShardedEstimate(world, stage, offload, static["weights"], static["gradients"], static["optimizer states"],
                           gathered, parts["activations"], parts["temporaries"], one.overhead, cpu_ram)


# --------------------------------------------------------------------------------------------------
# Launching: torchrun with a timeout
# --------------------------------------------------------------------------------------------------

class RankFailure(RuntimeError):
    """A rank of a :func:`torchrun` launch failed, or the launch ran past its timeout."""


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

    A rank *killed by a signal* (a C++ abort with no Python exception; gloo's ranks do it now and then on a
    CPU with fewer cores than ranks) is not an error of the script: the launch is repeated, up to
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


class RankKilled(RankFailure):
    """A rank of a :func:`torchrun` launch was killed by a signal (e.g. ``SIGABRT``), not by a Python exception."""

    def __init__(self, message: str, summary: str):
        super().__init__(message)
        self.summary = summary


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
            killed = re.search(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*-(\d+)", cause, re.S)
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
