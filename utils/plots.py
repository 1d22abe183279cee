"""Plots in one consistent style: memory breakdowns, memory over a step, loss curves."""
from __future__ import annotations

import bisect

from typing import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from .memory import MiB, MemoryTrace

COLORS = {
    "weights": "#4C72B0",
    "gradients": "#DD8452",
    "optimizer states": "#55A868",
    "activations": "#C44E52",
    "other": "#8C8C8C",
}
PHASE_COLORS = {"forward": "#4C72B0", "backward": "#DD8452", "optimizer": "#55A868"}


def _axes(ax: Axes | None, figsize: tuple[float, float] = (7, 4)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    ax.grid(True, axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_memory_breakdown(breakdowns: Mapping[str, Mapping[str, float]], ax: Axes | None = None,
                          title: str = "Training memory by kind", unit: int = MiB) -> Axes:
    """Stacked bars, one per setup: ``{"full fine-tune": {"weights": bytes, "gradients": ...}, ...}``."""
    ax = _axes(ax)
    kinds = list(dict.fromkeys(k for parts in breakdowns.values() for k in parts))
    names = list(breakdowns)
    bottoms = [0.0] * len(names)
    for kind in kinds:
        values = [breakdowns[n].get(kind, 0) / unit for n in names]
        ax.bar(names, values, bottom=bottoms, label=kind, color=COLORS.get(kind, COLORS["other"]))
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for i, total in enumerate(bottoms):
        ax.text(i, total, f"{total:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("MiB" if unit == MiB else f"units of {unit} bytes")
    ax.set_title(title)
    ax.legend(frameon=False)
    return ax


def plot_memory_timeline(traces: MemoryTrace | Mapping[str, MemoryTrace], ax: Axes | None = None,
                         title: str = "Tensor memory during one training step") -> Axes:
    """Held memory (MiB) after each allocation or free, in event order, with the phases of the first trace shaded.

    The x-axis counts the allocator's events, not time: the profiler that records them slows some
    operations far more than others, so its clock would distort the picture of a step.
    """
    ax = _axes(ax, (8, 4))
    if isinstance(traces, MemoryTrace):
        traces = {"": traces}
    for i, (label, tr) in enumerate(traces.items()):
        ax.step(range(len(tr.bytes)), [b / MiB for b in tr.bytes], where="post", label=label or None, lw=1.5)
        if i == 0:
            for name, (start, end) in tr.phases.items():
                first, last = bisect.bisect_left(tr.times_ms, start), bisect.bisect_right(tr.times_ms, end)
                ax.axvspan(first, max(first, last - 1), color=PHASE_COLORS.get(name, COLORS["other"]), alpha=0.12, lw=0)
                ax.text((first + last - 1) / 2, 1.0, name, transform=ax.get_xaxis_transform(),
                        ha="center", va="top", fontsize=9)
    ax.set_xlabel("allocation and free events, in order")
    ax.set_ylabel("MiB held")
    ax.set_title(title)
    if any(traces):
        ax.legend(frameon=False, loc="lower right")
    return ax


def _loss_points(history: Sequence[float] | Sequence[Mapping[str, float]]) -> tuple[list[float], list[float]]:
    if history and isinstance(history[0], Mapping):  # a Trainer's state.log_history
        rows = [h for h in history if "loss" in h and "step" in h]
        return [h["step"] for h in rows], [h["loss"] for h in rows]
    return list(range(1, len(history) + 1)), list(history)


def plot_loss(histories: Sequence | Mapping[str, Sequence], ax: Axes | None = None,
              title: str = "Training loss", log: bool = False) -> Axes:
    """Loss against step, from a list of losses or a Trainer's ``state.log_history`` (or a dict of them)."""
    ax = _axes(ax)
    if not isinstance(histories, Mapping):
        histories = {"": histories}
    for label, history in histories.items():
        steps, losses = _loss_points(history)
        ax.plot(steps, losses, marker="o" if len(steps) < 30 else None, ms=3, label=label or None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    if any(histories):
        ax.legend(frameon=False)
    return ax


def bar_labels(ax: Axes, fmt: str = "{:.1f}") -> None:
    """Write each bar's height above it."""
    for container in ax.containers:
        ax.bar_label(container, labels=[fmt.format(b.get_height()) for b in container], fontsize=9)


__all__: Iterable[str] = ["COLORS", "plot_memory_breakdown", "plot_memory_timeline", "plot_loss", "bar_labels"]
