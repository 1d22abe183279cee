"""Memory measurement that means the same thing on a CPU and on a GPU.

Four kinds of number, each exact about what it counts:

- **static bytes** (:func:`parameter_bytes`, :func:`gradient_bytes`, :func:`optimizer_state_bytes`):
  ``numel * element_size`` summed over the tensors that exist, deduplicated by storage.
- **saved activations** (:func:`count_saved_tensors`): the bytes of the storages that autograd keeps
  for the backward pass, seen through ``torch.autograd.graph.saved_tensors_hooks``, deduplicated by
  storage, parameters excluded. This is what gradient checkpointing reduces.
- **peak** (:func:`trace_memory`): the highest tensor memory held while a function runs, as
  ``baseline`` (what the caller counts as held at the start: for a training step, the model's weights
  and optimizer states) plus the highest rise above the start. On CUDA the rise is the caching
  allocator's ``max_memory_allocated`` minus its ``memory_allocated`` at the start. On the CPU, which
  keeps no such statistic, it is the running sum of the allocation and free events that
  ``torch.profiler`` records with ``profile_memory=True``. Process RSS is *not* used: it counts the
  Python heap, libraries and pages the allocator keeps, and is not a measure of tensor memory.
- **a training step** (:func:`measure_training_step`): the above, together, for one forward +
  backward (+ optimizer step).

The same rule on both devices: a peak counts the measured model's weights, gradients, optimizer states,
activations and the step's transient buffers, and nothing that other code left alive before the step
(other models of earlier cells, the batch, the model's buffers). On CUDA the allocator sees those
too: their bytes are reported apart, as ``other_bytes``, never added to the peak.
"""
from __future__ import annotations

import gc
import os
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

MiB = 2**20


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the tensor's elements: ``numel * element_size``."""
    return t.numel() * t.element_size()


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (t.device.type, t.untyped_storage().data_ptr())


def to_local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` that this process holds: ``t.to_local()`` for a ``DTensor``, else ``t`` itself.

    FSDP2 (``fully_shard``) turns parameters, their gradients and optimizer states into DTensors, of which
    each rank holds one shard (notebook 09).
    """
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        if isinstance(t, DTensor):
            return t.to_local()
    return t


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind ``tensors``, each storage counted once (tied weights, views).

    A ``DTensor`` counts its local shard (:func:`to_local`): under FSDP, what this rank holds.
    """
    seen: dict[tuple[str, int], int] = {}
    for t in map(to_local, tensors):
        seen.setdefault(_storage_key(t), t.untyped_storage().nbytes())
    return sum(seen.values())


def _quant_state_tensors(p: torch.Tensor) -> list[torch.Tensor]:
    """The extra tensors bitsandbytes keeps beside a quantized weight (absmax, nested absmax, code...)."""
    out = []
    qs = getattr(p, "quant_state", None)
    while qs is not None:
        out += [t for t in (getattr(qs, "absmax", None), getattr(qs, "code", None)) if isinstance(t, torch.Tensor)]
        qs = getattr(qs, "state2", None)
    scb = getattr(p, "SCB", None)
    if isinstance(scb, torch.Tensor):
        out.append(scb)
    return out


def parameter_bytes(model: nn.Module, trainable_only: bool = False) -> int:
    """Bytes of the model's parameters (tied weights counted once).

    For bitsandbytes-quantized weights this includes the quantization constants they carry
    (absmax per block, nested constants, code table, int8 row scales).
    """
    params = [p for p in model.parameters() if p.requires_grad or not trainable_only]
    extras = [t for p in params for t in _quant_state_tensors(p)]
    # Linear8bitLt moves its int8 row scales from weight.SCB to module.state.SCB at the first forward.
    extras += [m.state.SCB for m in model.modules()
               if isinstance(getattr(getattr(m, "state", None), "SCB", None), torch.Tensor)
               and any(p.requires_grad or not trainable_only for p in m.parameters(recurse=False))]
    return unique_bytes(params) + unique_bytes(extras)


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the ``.grad`` tensors that exist now (zero after ``zero_grad(set_to_none=True)``)."""
    return unique_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (Adam: ``exp_avg`` and ``exp_avg_sq``, plus ``step``).

    States appear at the first ``optimizer.step()``; before it this is 0.
    """
    return unique_bytes(
        t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)
    )


def quant_constant_bytes(model: nn.Module) -> int:
    """Bytes of the bitsandbytes quantization constants (absmax, nested absmax, code tables) of the 4-bit layers.

    They live in each layer's ``quant_state``, not in parameters, so FSDP does not shard them: every rank keeps
    all of them. (:func:`parameter_bytes` counts them with the weights they belong to, while these are still
    bitsandbytes parameters; FSDP's sharded parameters no longer carry them.)
    """
    return unique_bytes(t for module in model.modules() for t in _quant_state_tensors(module))


@dataclass
class SavedTensors:
    """What autograd saved for backward inside a :func:`count_saved_tensors` block."""

    bytes: int = 0
    tensors: int = 0
    _seen: set = field(default_factory=set, repr=False)


@contextmanager
def count_saved_tensors(exclude: nn.Module | Iterable[torch.Tensor] | None = None) -> Iterator[SavedTensors]:
    """Count the bytes autograd saves for backward while the block runs (the activation memory).

    Each storage is counted once; storages of ``exclude`` (a module's parameters, usually the model)
    are not activations and are left out. Tensors saved inside a checkpointed region are not seen:
    checkpointing stores none of them, which is the point.
    """
    if isinstance(exclude, nn.Module):
        exclude = list(exclude.parameters())
    result = SavedTensors()
    result._seen = {_storage_key(t) for t in (exclude or [])}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in result._seen:
            result._seen.add(key)
            result.bytes += t.untyped_storage().nbytes()
            result.tensors += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ profiler's start/stop lines, written straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass
class MemoryTrace:
    """Tensor memory over the course of a function call.

    ``times_ms`` and ``bytes`` give the held bytes after each allocation/free event (CPU: from the
    profiler; CUDA: also from the profiler); ``baseline`` is what the caller counts as held before the
    call; ``peak`` is ``baseline`` plus the highest rise during it (CUDA: from the allocator's
    ``max_memory_allocated``); ``phases`` maps a phase name to its (start_ms, end_ms) for phases marked
    with ``torch.profiler.record_function("phase:NAME")``. ``other_bytes`` (CUDA only, else ``None``):
    the bytes allocated on the device at the start beyond ``baseline``, left out of every number above.
    """

    baseline: int
    peak: int
    times_ms: list[float]
    bytes: list[int]
    phases: dict[str, tuple[float, float]]
    source: str
    other_bytes: int | None = None

    @property
    def peak_above_baseline(self) -> int:
        return self.peak - self.baseline


def trace_memory(fn: Callable[[], Any], device: torch.device | str | None = None,
                 baseline: int | None = None) -> tuple[Any, MemoryTrace]:
    """Run ``fn()`` and return ``(its result, MemoryTrace)``.

    ``baseline``: the bytes that count as held when ``fn`` starts (e.g. ``parameter_bytes(model) +
    optimizer_state_bytes(opt)``); default 0. The same on both devices: on CUDA the allocator also
    holds whatever else is alive there (other models, inputs); that is reported as
    ``MemoryTrace.other_bytes`` and not counted in the peak.
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device or "cpu")
    baseline = baseline or 0
    activities = [ProfilerActivity.CPU]
    # A garbage collection inside fn() would free tensors whose allocation the trace never saw,
    # lowering the measured peak at random: collect first (before the allocator is read), not during it.
    gc.collect()
    allocated_before, other = 0, None
    if device.type == "cuda":
        if ProfilerActivity.CUDA in torch.profiler.supported_activities():
            activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
        other = allocated_before - baseline
        if other < 0:
            warnings.warn(f"trace_memory: baseline={baseline} bytes, but only {allocated_before} are allocated on "
                          f"{device}: part of what the baseline counts is elsewhere (the CPU, another GPU, or "
                          "CUDA unified memory, where paged optimizers keep large states). The peak is still "
                          "the baseline plus the allocator's rise during the step.", stacklevel=2)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with _quiet_stderr(), profile(activities=activities, profile_memory=True) as prof:
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    finally:
        if gc_was_enabled:
            gc.enable()
    events = list(prof.profiler.kineto_results.events())
    t0 = min((e.start_ns() for e in events), default=0)
    mem = sorted(
        (e.start_ns(), e.nbytes()) for e in events
        if e.name() == "[memory]" and e.device_type().name == device.type.upper()
    )
    held, times, values = baseline, [0.0], [baseline]
    for t, n in mem:
        held += n
        times.append((t - t0) / 1e6)
        values.append(held)
    phases = {
        e.name()[len("phase:"):]: ((e.start_ns() - t0) / 1e6, (e.end_ns() - t0) / 1e6)
        for e in events if e.name().startswith("phase:")
    }
    if device.type == "cuda":
        rise = torch.cuda.max_memory_allocated(device) - allocated_before
        peak, source = baseline + rise, "torch.cuda.max_memory_allocated"
    else:
        peak, source = max(values), "torch.profiler memory events"
    return result, MemoryTrace(baseline, peak, times, values, phases, source, other)


@dataclass
class StepMemory:
    """Bytes of one training step, by kind (see the module docstring for what each counts)."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    peak: int
    seconds: float
    trace: MemoryTrace = field(repr=False)

    @property
    def other_bytes(self) -> int | None:
        """CUDA: bytes alive on the device before the step that are not the model's weights or optimizer
        states (other models, the batch, buffers, allocator rounding), left out of ``peak``; CPU: ``None``."""
        return self.trace.other_bytes

    def breakdown(self) -> dict[str, int]:
        """The four parts of training memory, for :func:`utils.plots.plot_memory_breakdown`."""
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer states": self.optimizer_states, "activations": self.activations}


def _loss(output: Any) -> torch.Tensor:
    loss = output.loss if hasattr(output, "loss") else output
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError("The step's forward must return a scalar loss (or an output with .loss); "
                         "pass labels to a transformers model, or wrap the model with a loss function.")
    return loss


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter: where its step is measured."""
    return next(model.parameters()).device


def measure_training_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor] | torch.Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    warmup_steps: int = 0,
    batches: Sequence[dict[str, torch.Tensor] | torch.Tensor] | None = None,
) -> StepMemory:
    """Run one training step (forward, backward, optimizer step if given) and measure its memory.

    ``forward(model, batch)`` must return a scalar loss or an output with ``.loss``; the default
    calls ``model(**batch)`` for a dict and ``model(batch)`` otherwise. Gradients are cleared
    (set to None) before the step, so the trace shows them being allocated. The optimizer states
    of an optimizer that has not stepped yet appear during the step, as they do in real training.
    ``warmup_steps`` unmeasured steps run first: with 1, AdamW already holds its states and the
    measured step is a steady-state one, like every later step of training.

    Gradient accumulation: give ``batches`` (the micro-batches) instead of ``batch``. The step is then a
    forward and backward pass per micro-batch, each loss divided by their number as the Trainer does,
    and one optimizer step; ``activations`` is the first micro-batch's saved bytes.

    ``peak`` is the model's weights and optimizer states held before the step plus the step's highest
    rise: on CUDA as on the CPU, other tensors on the device are not in it (see ``other_bytes``).
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}.")
    if (batch is None) == (batches is None):
        raise ValueError("Give either batch (one forward pass) or batches (micro-batches of one accumulated step).")
    micro = [batch] if batches is None else list(batches)
    if not micro:
        raise ValueError("batches is empty: give at least one micro-batch.")
    forward = forward or (lambda m, b: m(**b) if isinstance(b, dict) else m(b))
    device = _model_device(model)
    k = len(micro)

    def step(saved: list[SavedTensors] | None) -> None:
        """One training step; with ``saved`` (the measured step), what each forward pass saved is appended to it."""
        for i, b in enumerate(micro):
            tag = "" if k == 1 else f" {i + 1}"
            counting = count_saved_tensors(model) if saved is not None else nullcontext()
            with torch.profiler.record_function(f"phase:forward{tag}"), counting as s:
                loss = _loss(forward(model, b))
                if k > 1:
                    loss = loss / k
            if saved is not None:
                saved.append(s)
            with torch.profiler.record_function(f"phase:backward{tag}"):
                loss.backward()
            if k > 1:  # (one batch: its loss lives on through the optimizer step, as in a plain training loop)
                del loss
        if optimizer is not None:
            with torch.profiler.record_function("phase:optimizer"):
                optimizer.step()

    for _ in range(warmup_steps):
        model.zero_grad(set_to_none=True)
        step(None)
    model.zero_grad(set_to_none=True)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    held_before = parameter_bytes(model) + (optimizer_state_bytes(optimizer) if optimizer else 0)
    saved: list[SavedTensors] = []
    start = time.perf_counter()
    _, trace = trace_memory(lambda: step(saved), device, baseline=held_before)
    seconds = time.perf_counter() - start
    return StepMemory(
        weights=parameter_bytes(model),
        gradients=gradient_bytes(model),
        optimizer_states=optimizer_state_bytes(optimizer) if optimizer else 0,
        activations=saved[0].bytes,
        peak=trace.peak,
        seconds=seconds,
        trace=trace,
    )


def format_bytes(n: float) -> str:
    """Human-readable bytes in binary units: ``'27.3 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
