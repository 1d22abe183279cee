"""Device and dtype choice: one place that decides where the course computes, and in what precision."""
from __future__ import annotations

import os

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
DTYPE_ENV = "COURSE_DTYPE"  # e.g. COURSE_DTYPE=fp16: a GPU with bf16 computes as a T4 would (tools/gpu_check.py)


def get_device(name: str | None = None) -> torch.device:
    """The device to compute on: CUDA when present, else CPU; or the one named (``"cpu"``, ``"cuda"``).

    Asking for CUDA on a machine without a GPU raises a ``RuntimeError`` that says what to do.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"You asked for {name!r} but this machine has no CUDA GPU that torch can see. "
            "Use get_device() (it picks the CPU here), or on Colab choose Runtime > Change runtime type > GPU."
        )
    return device


def native_bf16(capability: tuple[int, int]) -> bool:
    """True for a CUDA compute capability whose tensor cores compute bf16: 8.0 (Ampere) or newer."""
    return tuple(capability) >= (8, 0)


def supports_bf16(device: torch.device) -> bool:
    """True only where the GPU computes bf16 natively (:func:`native_bf16` of its compute capability).

    ``torch.cuda.is_bf16_supported()``, which transformers asks, answers True on a T4 (7.5) or a V100 (7.0) too:
    its default ``including_emulation=True`` only checks that a bf16 tensor can be created there. So we
    decide by compute capability.
    """
    return device.type == "cuda" and native_bf16(torch.cuda.get_device_capability(device))


def compute_dtype(device: torch.device | None = None) -> torch.dtype:
    """The precision to compute in on ``device``.

    - CUDA with compute capability >= 8.0 (A100, RTX 30xx/40xx, H100): bfloat16.
    - older CUDA GPUs (T4, V100): float16.
    - CPU: float32. On a CPU without native bf16 (AVX2 only), bf16/fp16 matmuls run 25-40x slower
      than fp32 (measured on the course's CI machine), so training in them would only cost time.

    On CUDA the environment variable ``COURSE_DTYPE`` (``fp16``, ``bf16``, ``fp32``) overrides the choice.
    """
    device = device or get_device()
    if device.type != "cuda":
        return torch.float32
    if os.environ.get(DTYPE_ENV, "auto") != "auto":
        return dtype_from_name(os.environ[DTYPE_ENV])
    return torch.bfloat16 if supports_bf16(device) else torch.float16


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """``"fp32"``, ``"float16"``, ``"bf16"`` ... to a ``torch.dtype``; unknown names raise a clear ``ValueError``."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown dtype name {name!r}. Use one of: {', '.join(sorted(DTYPES))}.") from None


def mixed_precision_flags(device: torch.device | None = None) -> dict[str, bool]:
    """``{"bf16": ..., "fp16": ...}`` for ``TrainingArguments``/``SFTConfig``, matching :func:`compute_dtype`.

    Both False on CPU: trl's ``SFTConfig`` defaults to ``bf16=True``, which on this CPU only slows training.
    """
    dtype = compute_dtype(device)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}
