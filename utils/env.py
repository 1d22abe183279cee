"""Seeding, quieting libraries for reproducible notebook output, and an environment check."""
from __future__ import annotations

import importlib
import logging
import os
import platform
import random
import warnings
from typing import Callable

import numpy as np
import torch

from .device import compute_dtype, get_device
from .loading import BUNDLED_MODEL, TASK_DIR, model_name

STACK = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU), so that reruns print the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def quiet() -> None:
    """Silence what would make notebook output change from run to run or machine to machine.

    Library log messages below ERROR, Hugging Face download/loading progress bars and the
    bitsandbytes notice about optional CPU kernels. Note: with the transformers log level above
    WARNING, ``TrainingArguments(disable_tqdm=...)`` defaults to ``True``; pass ``disable_tqdm=False``
    to keep the training progress bar.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torch.utils.checkpoint.*use_reentrant.*")


def _version(module: str) -> tuple[bool, str]:
    try:
        return True, importlib.import_module(module).__version__
    except Exception as e:  # a broken install is what this check is for
        return False, f"cannot import ({type(e).__name__}: {e})"


def _bnb_backend() -> tuple[bool, str]:
    """Quantize and dequantize a small tensor to NF4 on the compute device: proves the backend runs."""
    try:
        import bitsandbytes.functional as F

        device = get_device()
        x = torch.randn(64, 64, device=device, dtype=torch.float32)
        q, state = F.quantize_4bit(x, quant_type="nf4")
        err = (F.dequantize_4bit(q, state) - x).abs().mean().item()
        ok = err < 0.15  # NF4 on N(0, 1) data: about 0.1 mean absolute error
        return ok, f"NF4 round trip on {device.type}, mean abs error {err:.3f}"
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"


def _device() -> tuple[bool, str]:
    device = get_device()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cc = ".".join(map(str, torch.cuda.get_device_capability(device)))
        return True, f"cuda: {name} (compute capability {cc}), compute dtype {compute_dtype(device)}"
    return True, f"cpu ({platform.machine()}, {torch.get_num_threads()} threads), compute dtype {compute_dtype(device)}"


def _data() -> tuple[bool, str]:
    missing = [str(p) for p in (BUNDLED_MODEL / "model.safetensors", TASK_DIR / "train.jsonl") if not p.exists()]
    return (not missing, "bundled model and data set present" if not missing else f"missing: {', '.join(missing)}")


def check_environment(print_fn: Callable[[str], None] = print) -> bool:
    """Print one ``OK``/``FAIL`` line per component; return True when all are OK."""
    checks: list[tuple[str, tuple[bool, str]]] = [("python", (True, platform.python_version()))]
    checks += [(m, _version(m)) for m in STACK]
    checks += [("device", _device()), ("bitsandbytes backend", _bnb_backend()), ("course data", _data()),
               ("model", (True, model_name()))]
    for name, (ok, detail) in checks:
        print_fn(f"{'OK  ' if ok else 'FAIL'} {name:<21} {detail}")
    return all(ok for _, (ok, _) in checks)
