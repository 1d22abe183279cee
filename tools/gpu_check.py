"""The course on a CUDA GPU, in one run of at most 8 minutes: measured training steps beside the estimator's
prediction, then as many notebooks as the time budget holds, on two models.

    python tools/gpu_check.py [--budget-s 450] [--dtype auto|bf16|fp16] [--notebooks 06 05_lora ...] ...
    python tools/gpu_check.py --dry-run      # no GPU: the same code path on the CPU, small

What it does, in this order, writing everything it has found to one JSON file after each step (so a run
stopped from outside still leaves its results):

1. The machine: the device's name and compute capability, torch, CUDA and the course's libraries' versions,
   and which of the packages the check uses import (a missing one skips what needs it, with the reason).
2. The models: the bundled ``data/kjv-llama`` and a Llama-architecture model of about 125M parameters built
   from its config with the bundled tokenizer and random weights (a GPU machine may have no internet, so no
   hub model is assumed). ``--dry-run`` builds a tiny one instead.
3. Measured steps on each model, the four set-ups of notebook 06: full fine-tune (fp32), LoRA on an fp32 base,
   QLoRA (NF4 + double quantization, base and compute in ``--dtype``) and QLoRA with gradient checkpointing.
   Each set-up is a ``utils.estimator.Recipe``: the model is loaded with ``utils.load_model``, prepared with
   ``E.prepare_for_training`` and measured with ``E.measure_recipe`` (weights, gradients, optimizer states,
   activations, peak), and beside the measurement stands ``E.estimate(shape, recipe)`` for the same device
   (``"cuda"``; ``"cpu"`` in a dry run) with the relative error of each part. Then a few timed steps on
   held-out text (median step time, the loss, which must be finite); in fp16 they run with a gradient scaler
   (``torch.amp.GradScaler``), as the Trainer does with ``fp16=True``. On CUDA also: the allocator's
   ``max_memory_allocated`` over the measurement, what was allocated before loading and what utils counted as
   not the measured model's (``MemoryTrace.other_bytes``).
4. Notebooks (``notebooks/NN_*.ipynb``), executed with nbclient (``COURSE_MODEL`` set for the kernel, and
   ``COURSE_DTYPE`` when ``--dtype`` is not auto), each in a copy folder of its own so that committed notebooks
   and their ``notebooks/outputs/`` are never written; a cell appended to the copy reads the kernel's CUDA
   peak. All of them on the bundled model first, in the order of ``PRIORITY`` (what only a GPU shows first),
   then on the built model, ``--jobs`` at a time, while the budget lasts: a notebook is not started with less
   than ``MIN_START_S`` left (skipped, with the reason), and one still running when the budget ends is stopped
   (skipped, not failed). ``--timeout`` stops one notebook (failed). A notebook that imports a package that is
   missing here (``trl``, ``datasets``, ``bitsandbytes``) is skipped, naming it.

``--dtype fp16`` runs the QLoRA steps in fp16 with the gradient scaler and, unless ``--notebooks`` says
otherwise, notebook 06 only, with ``COURSE_DTYPE=fp16``: the path of a T4 (no native bf16) on any GPU.

Exit status: 0 when nothing failed (skipped steps and notebooks are listed, with their reasons), 1 when a
measurement or a notebook failed, 2 when the check cannot run here (no CUDA without ``--dry-run``, torch or
transformers missing, a filter matching no notebook, bf16 asked of a GPU without it).

On an offline GPU machine, install the wheel kit first (``bash tools/gpu_kit.sh`` prepares it and prints the
install line), then run this file with ``python3`` directly (``course.sh`` would try to set up a venv).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import gc
import importlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

STARTED = time.monotonic()  # the budget counts from here
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCHEMA = 2
SETUPS = ("full fp32", "LoRA (fp32 base)", "QLoRA", "QLoRA + checkpointing")
REQUIRED = ("torch", "transformers", "peft", "accelerate", "safetensors")  # without these nothing runs
OPTIONAL = ("bitsandbytes", "trl", "datasets", "matplotlib", "nbformat", "nbclient", "ipykernel")
RUNNER = ("nbformat", "nbclient", "ipykernel")  # executing notebooks needs all three
VERSIONS = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "nbclient")
# Notebooks on each model in this order: what only a GPU shows first (bitsandbytes' CUDA kernels, the Trainer in
# 16-bit, the estimator against the CUDA allocator), the CPU-bound ones (09: FSDP on CPU ranks) last.
PRIORITY = ("06", "04", "08", "05", "07", "10", "01", "02", "03", "00", "09")
MIN_START_S = 30  # a notebook started with less time left would only be stopped (a dry run: 5 s)
# What a notebook's code shows it needs, beyond torch and transformers: an import, or a utils helper that imports
# the package (utils.quiet imports datasets; utils.sft_config trl; utils.nf4_config builds a bitsandbytes config).
NEEDS = {
    "datasets": (r"^\s*(from|import)\s+datasets\b", r"\butils\.(quiet|load_task_dataset)\("),
    "trl": (r"^\s*(from|import)\s+trl\b", r"\butils\.sft_config\("),
    "bitsandbytes": (r"^\s*(from|import)\s+bitsandbytes\b", r"\butils\.nf4_config\(", r"\bBitsAndBytesConfig\b"),
    "matplotlib": (r"^\s*(from|import)\s+matplotlib\b", r"\butils\.plot_"),
}
# Built models: hidden, layers, heads, intermediate. With the bundled tokenizer's small vocabulary the
# ~125M parameters sit in the blocks (GPT-Neo-125M has the same width and depth but 39M of its 125M in
# a 50k-token embedding).
BUILT = {"llama-125m": (768, 12, 12, 3456), "llama-tiny": (64, 2, 4, 128)}
LORA_R = 8  # lora_alpha = 2 * r, as utils.estimator.prepare_for_training sets it (notebook 06: 16)
PARTS = ("weights", "gradients", "optimizer_states", "activations", "peak")
STATS_MARK = "GPU_CHECK_STATS "
STATS_CELL = f"""import json as _json, torch as _torch
_cuda = _torch.cuda.is_available()
print({STATS_MARK!r} + _json.dumps({{
    "cuda": _cuda,
    "max_memory_allocated": _torch.cuda.max_memory_allocated() if _cuda else None,
    "max_memory_reserved": _torch.cuda.max_memory_reserved() if _cuda else None,
}}))"""
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU needed: CPU, notebook 00 on the bundled model, a tiny built model, small batches")
    p.add_argument("--output", default="gpu_check.json", help="the JSON file to write (default: %(default)s)")
    p.add_argument("--budget-s", type=float, default=450,
                   help="the whole run's wall time, from start: measured steps first, then notebooks while it "
                        "lasts (default: %(default)s, which ends within 8 minutes with the kernels' shutdown)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16"), default="auto",
                   help="the 16-bit dtype of the QLoRA steps and the notebooks (COURSE_DTYPE): auto is the "
                        "GPU's own (bf16 from compute capability 8.0, else fp16); fp16 adds the gradient scaler "
                        "and runs notebook 06 only, unless --notebooks names others (default: %(default)s)")
    p.add_argument("--notebooks", nargs="+", metavar="NN_OR_STEM",
                   help="only the notebooks whose name starts with one of these (e.g. 00 05_lora); default all "
                        "(06 with --dtype bf16/fp16, 00 in a dry run)")
    p.add_argument("--models", nargs="+", choices=("bundled", "built"),
                   help="the models to check (default: both; a dry run runs notebooks on the bundled one only)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds one notebook may run before it counts as failed (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None,
                   help="notebooks executed at once (default: 4 on CUDA, 1 in a dry run)")
    p.add_argument("--batch-size", type=int, default=None, help="measured batch (default: 8 on CUDA, 2 in a dry run)")
    p.add_argument("--seq-len", type=int, default=None, help="measured sequence length (default: 256, 32 in a dry run)")
    p.add_argument("--timed-steps", type=int, default=None,
                   help="timed steps after one warm-up, whose median is the step time (default: 5, 2 in a dry run)")
    p.add_argument("--skip-notebooks", action="store_true", help="only the measured steps")
    p.add_argument("--skip-measure", action="store_true", help="only the notebooks")
    p.add_argument("--without", nargs="+", default=[], choices=OPTIONAL, metavar="PACKAGE",
                   help="behave as if PACKAGE were not installed: what needs it is skipped (to test the skips; "
                        f"one of {', '.join(OPTIONAL)})")
    p.add_argument("--executed-dir", help="also save each executed notebook copy here (NN_name.MODEL.ipynb)")
    p.add_argument("--notebook-dir", default=str(NOTEBOOKS),
                   help="the folder of NN_*.ipynb notebooks (default: the course's notebooks/)")
    args = p.parse_args(argv)
    small = args.dry_run
    args.jobs = args.jobs or (1 if small else 4)
    args.batch_size = args.batch_size or (2 if small else 8)
    args.seq_len = args.seq_len or (32 if small else 256)
    args.timed_steps = args.timed_steps or (2 if small else 5)
    args.models = args.models or ["bundled", "built"]
    args.min_start_s = 5 if small else MIN_START_S
    if min(args.jobs, args.timeout, args.budget_s, args.batch_size, args.seq_len, args.timed_steps) <= 0:
        p.error("--jobs, --timeout, --budget-s, --batch-size, --seq-len and --timed-steps must be positive")
    return args


def select_notebooks(folder: Path, prefixes: list[str] | None, dry_run: bool, dtype: str = "auto") -> list[Path]:
    """The notebooks in ``folder`` whose stem starts with one of ``prefixes``, in ``PRIORITY`` order, then by name.

    Default: all; 00 in a dry run; 06 with a forced dtype (the notebook that trains in it).
    """
    every = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not every:
        raise ValueError(f"no NN_*.ipynb notebook in {folder}")
    prefixes = prefixes or (["00"] if dry_run else ["06"] if dtype != "auto" else None)
    chosen = every
    if prefixes:
        chosen = [nb for nb in every if any(nb.stem.startswith(p.removesuffix(".ipynb")) for p in prefixes)]
        if not chosen:
            raise ValueError(f"--notebooks {' '.join(prefixes)} matches no notebook; there are: "
                             f"{', '.join(nb.stem for nb in every)}")
    rank = {nn: i for i, nn in enumerate(PRIORITY)}
    return sorted(chosen, key=lambda nb: (rank.get(nb.stem[:2], len(rank)), nb.stem))


def package_status(without: list[str]) -> dict[str, str]:
    """``{package: "ok" | why it cannot be used}`` for the packages the check uses, each imported here."""
    status = {}
    for name in REQUIRED + OPTIONAL:
        if name in without:
            status[name] = "left out (--without)"
            continue
        try:
            importlib.import_module(name)
            status[name] = "ok"
        except Exception as e:  # ImportError, or a broken install (e.g. pyarrow too old for datasets)
            status[name] = f"cannot import: {type(e).__name__}: {first_lines(str(e), 1)}"
    return status


def notebook_needs(path: Path) -> list[str]:
    """The optional packages a notebook's code shows it needs (``NEEDS``)."""
    import nbformat

    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    return [name for name, patterns in NEEDS.items() if any(re.search(p, code, re.M) for p in patterns)]


def write_json(path: Path, doc: dict) -> None:
    """Write atomically, so that a run killed mid-write still leaves the previous complete file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def _text_lines(text: str) -> list[str]:
    """The non-blank lines of ``text``, without terminal colour codes or trailing spaces."""
    return [line.rstrip() for line in ANSI.sub("", text).strip().splitlines() if line.strip()]


def first_lines(text: str, n: int = 8) -> str:
    return "\n".join(_text_lines(text)[:n])


def last_lines(text: str, n: int = 16) -> str:
    return "\n".join(_text_lines(text)[-n:])


def seconds_left(budget_s: float) -> float:
    return budget_s - (time.monotonic() - STARTED)


# ---------------------------------------------------------------- machine and models

def machine(device) -> dict[str, Any]:
    import torch

    import utils

    info: dict[str, Any] = {"type": device.type, "compute_dtype": str(utils.compute_dtype(device)),
                            "name": None, "compute_capability": None, "total_memory_bytes": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, compute_capability=f"{props.major}.{props.minor}",
                    total_memory_bytes=props.total_memory)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def versions(status: dict[str, str]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for name in VERSIONS:
        out[name] = importlib.import_module(name).__version__ if status.get(name) == "ok" else None
    return out


def quiet(status: dict[str, str]) -> None:
    """``utils.quiet()``, which imports datasets; without datasets, the same for transformers alone."""
    import utils

    if status["datasets"] == "ok":
        utils.quiet()
        return
    import warnings

    import transformers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def build_llama(path: Path, hidden: int, layers: int, heads: int, intermediate: int) -> None:
    """A random-weight Llama (seed 0) with the bundled tokenizer, saved as safetensors to ``path``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from utils.loading import BUNDLED_MODEL

    tok = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def describe_model(path: Path) -> dict[str, Any]:
    """Parameter count (from the safetensors headers, tied weights once) and the config's sizes."""
    from safetensors import safe_open

    config = json.loads((path / "config.json").read_text())
    count = 0
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                count += n
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings")
    return {"path": str(path), "parameters": count, "config": {k: config.get(k) for k in keys}}


# ---------------------------------------------------------------- measured steps

def resolve_dtype(name: str, device):
    """The 16-bit dtype the QLoRA steps compute in: ``auto`` is ``utils.compute_dtype`` (fp32 on the CPU)."""
    import torch

    import utils

    if name == "auto":
        return utils.compute_dtype(device)
    dtype = utils.dtype_from_name(name)
    if dtype == torch.bfloat16 and device.type == "cuda" and not utils.supports_bf16(device):
        raise ValueError(f"--dtype bf16: this GPU (compute capability "
                         f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}) has no native bf16; "
                         "use --dtype fp16 or auto")
    return dtype


def recipes(compute_dtype, device_type: str, batch_size: int, seq_len: int) -> dict:
    """Notebook 06's four set-ups as estimator recipes (all-linear LoRA of rank ``LORA_R``, torch's AdamW).

    QLoRA computes in ``compute_dtype``: recipe precision ``"bf16"`` (16-bit base; fp16 costs the same bytes),
    or ``"fp32"`` where that is float32 (the CPU); ``prepare_kbit`` as notebook 06 prepares the 4-bit model.
    """
    import torch

    from utils import estimator as E

    common = dict(batch_size=batch_size, seq_len=seq_len, lora_r=LORA_R, lora_targets="all-linear",
                  device=device_type)
    q = "fp32" if compute_dtype == torch.float32 else "bf16"
    return {
        "full fp32": E.Recipe(method="full", precision="fp32", **common),
        "LoRA (fp32 base)": E.Recipe(method="lora", precision="fp32", **common),
        "QLoRA": E.Recipe(method="qlora", precision=q, prepare_kbit=True, **common),
        "QLoRA + checkpointing": E.Recipe(method="qlora", precision=q, prepare_kbit=True, checkpointing=True,
                                          **common),
    }


def load_for(recipe, path: str, device, compute_dtype):
    """The model at ``path`` loaded and prepared as ``recipe`` trains it, in train mode."""
    import torch

    import utils
    from utils import estimator as E

    utils.seed_everything(0)
    weights = torch.float32 if recipe.weight_itemsize == 4 else compute_dtype
    if recipe.method == "qlora":
        model = utils.load_model(path, quantization_config=utils.nf4_config(weights), dtype=weights, device=device)[0]
    else:
        model = utils.load_model(path, dtype=weights, device=device)[0]
    return E.prepare_for_training(model, recipe)


def lm_batch(name: str, batch_size: int, seq_len: int, device) -> dict:
    """``batch_size`` consecutive chunks of held-out text, labels = inputs (:func:`utils.lm_batch`)."""
    from transformers import AutoTokenizer

    import utils

    tok = AutoTokenizer.from_pretrained(name)
    ids = tok(utils.heldout_text()[: 40 * batch_size * seq_len], return_tensors="pt").input_ids[0]
    return utils.lm_batch(ids, batch_size, seq_len, device)


def relative_error(predicted: int | None, measured: int | None) -> float | None:
    """``(predicted - measured) / measured``; None where there is nothing to divide by."""
    if predicted is None or not measured:
        return None
    return round((predicted - measured) / measured, 5)


def predicted_parts(est) -> dict[str, Any]:
    return {"weights": est.weights, "gradients": est.gradients, "optimizer_states": est.optimizer_states,
            "activations": est.activations, "peak": est.peak, "peak_moment": est.peak_moment,
            "peak_parts": est.peak_parts, "overhead": est.overhead, "total": est.total,
            "trainable_parameters": est.trainable_parameters, "device": est.recipe.device}


def timed_steps(model, recipe, batch: dict, device, steps: int, scaled: bool) -> dict[str, Any]:
    """One warm-up step and ``steps`` timed ones on ``batch``; with ``scaled``, through a ``GradScaler``."""
    import torch

    from utils import estimator as E

    cuda = device.type == "cuda"
    optimizer = E.make_optimizer(model, recipe)
    scaler = torch.amp.GradScaler(device.type) if scaled else None
    times, losses, skipped = [], [], 0
    for i in range(steps + 1):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped when the scaled gradients overflowed; then the scale shrinks
            scaler.update()
            skipped += scaler.get_scale() < scale
        if cuda:
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    seconds = statistics.median(times)
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses)):
        raise FloatingPointError(f"a loss is not finite: {losses}")
    return {"step_seconds": seconds, "tokens_per_second": batch["input_ids"].numel() / seconds,
            "loss": losses[-1], "losses": losses,
            "grad_scaler": None if scaler is None else {"scale": scaler.get_scale(), "steps_skipped": skipped}}


def measure(kind: str, recipe, path: str, batch: dict, device, compute_dtype, steps: int,
            scaled: bool) -> dict[str, Any]:
    """Measure one set-up with ``E.measure_recipe``, predict it with ``E.estimate``, and time it."""
    import torch

    from utils import estimator as E

    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    before_load = torch.cuda.memory_allocated(device) if cuda else None
    model = load_for(recipe, path, device, compute_dtype)
    est = E.estimate(E.shape_from_config(model.config), recipe)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step = E.measure_recipe(model, recipe, steps=2)
    allocator_peak = torch.cuda.max_memory_allocated(device) if cuda else None
    measured = {"weights": step.weights, "gradients": step.gradients, "optimizer_states": step.optimizer_states,
                "activations": step.activations, "peak": step.peak, "peak_source": step.trace.source,
                "held_before_step": step.trace.baseline, "profiled_step_seconds": step.seconds}
    predicted = predicted_parts(est)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    timing = timed_steps(model, recipe, batch, device, steps, scaled)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {
        "recipe": recipe.label(), "recipe_fields": dataclasses.asdict(recipe),
        "trainable_parameters": trainable, "measured": measured, "predicted": predicted,
        "relative_error": {part: relative_error(predicted[part], measured[part]) for part in PARTS},
        "timing": timing,
        "cuda": None if not cuda else {
            "memory_allocated_before_load": before_load, "max_memory_allocated": allocator_peak,
            "peak_relative_error_vs_allocator": relative_error(est.peak, allocator_peak),
            "other_bytes": step.trace.other_bytes,  # on the device, not the measured model's
            "memory_allocated_after_free": torch.cuda.memory_allocated(device)},
    }


def measure_all(paths: dict[str, str], args, device, compute_dtype, status: dict[str, str], doc: dict,
                save) -> None:
    """Every set-up on every model, in order, each row saved as soon as it is done."""
    import torch

    import utils

    scaled = compute_dtype == torch.float16
    for key, path in paths.items():
        seq_len = min(args.seq_len, doc["models"][key]["config"]["max_position_embeddings"] or args.seq_len)
        batch = lm_batch(path, args.batch_size, seq_len, device)
        for kind, recipe in recipes(compute_dtype, device.type, args.batch_size, seq_len).items():
            row: dict[str, Any] = {"model": key, "setup": kind, "dtype": str(compute_dtype).removeprefix("torch."),
                                   "grad_scaler": scaled and recipe.method == "qlora", "passed": None,
                                   "skipped": None, "error": None, "batch": [args.batch_size, seq_len]}
            start = time.monotonic()
            left = seconds_left(args.budget_s)
            if recipe.method == "qlora" and status["bitsandbytes"] != "ok":
                row["skipped"] = f"needs bitsandbytes: {status['bitsandbytes']}"
            elif left < args.min_start_s:
                row["skipped"] = f"not started: {max(left, 0):.0f} s left of --budget-s {args.budget_s:g}"
            else:
                try:
                    row.update(measure(kind, recipe, path, batch, device, compute_dtype, args.timed_steps,
                                       row["grad_scaler"]))
                    row["passed"] = True
                except Exception as e:
                    row["passed"] = False
                    row["error"] = first_lines(f"{type(e).__name__}: {e}\n" + traceback.format_exc()[-1500:])
            row["seconds"] = round(time.monotonic() - start, 2)
            doc["measurements"].append(row)
            save()
            if row["passed"]:
                m, err = row["measured"], row["relative_error"]["peak"]
                said = (f"peak {utils.format_bytes(m['peak'])}, predicted {utils.format_bytes(row['predicted']['peak'])} "
                        f"({err:+.1%}), step {row['timing']['step_seconds'] * 1e3:.1f} ms")
            else:
                said = f"SKIPPED ({row['skipped']})" if row["skipped"] else "FAILED " + row["error"].splitlines()[0]
            print(f"gpu_check: {kind} on {key}: {said}", flush=True)
        del batch


# ---------------------------------------------------------------- notebooks

def copy_tree(workdir: Path, notebook: Path) -> Path:
    """``workdir`` with links to the repository's top-level entries and a notebooks/ folder of its own, which
    links the notebooks' own folders too (``scripts/``: notebook 09 launches ``scripts/fsdp_step.py``)."""
    for entry in ROOT.iterdir():
        if entry.name not in ("notebooks", ".git", ".venv", ".gpu_kit") and not entry.name.startswith("gpu_check"):
            (workdir / entry.name).symlink_to(entry)
    (workdir / "notebooks").mkdir()
    for entry in notebook.parent.iterdir():
        if entry.is_dir() and entry.name not in ("outputs", ".ipynb_checkpoints"):
            (workdir / "notebooks" / entry.name).symlink_to(entry)
    target = workdir / "notebooks" / notebook.name
    shutil.copyfile(notebook, target)
    return target


def cell_seconds(cell) -> float | None:
    timing = cell.get("metadata", {}).get("execution", {})
    try:
        start = dt.datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return (end - start).total_seconds()


def notebook_row(notebook: Path, model_key: str, **values: Any) -> dict[str, Any]:
    row = {"notebook": notebook.stem, "model": model_key, "passed": None, "skipped": None, "seconds": None,
           "error": None, "failed_cell": None, "cuda_max_memory_allocated": None,
           "cuda_max_memory_reserved": None, "slowest_cells": []}
    row.update(values)
    return row


async def run_notebook(notebook: Path, model_key: str, model_path: str, args, env: dict,
                       limit: float) -> dict[str, Any]:
    """Execute a copy of ``notebook`` with ``COURSE_MODEL=model_path``, stopping it after ``limit`` seconds."""
    import nbformat
    from nbclient import NotebookClient

    result = notebook_row(notebook, model_key, passed=False)
    with tempfile.TemporaryDirectory(prefix=f"gpu_check_{notebook.stem}_{model_key}_") as tmp:
        path = copy_tree(Path(tmp), notebook)
        nb = nbformat.read(path, as_version=4)
        user_cells = len(nb.cells)
        nb.cells.append(nbformat.v4.new_code_cell(STATS_CELL))
        client = NotebookClient(nb, timeout=int(args.timeout), kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.monotonic()
        try:
            await asyncio.wait_for(client.async_execute(env=dict(env, COURSE_MODEL=model_path)), limit)
            result["passed"] = True
        except Exception as e:  # CellExecutionError, CellTimeoutError, DeadKernelError, asyncio.TimeoutError ...
            result["error"] = first_lines(f"{type(e).__name__}: {getattr(e, 'ename', '')} {getattr(e, 'evalue', '')}\n{e}")
            if time.monotonic() - start >= limit - 1:  # stopping a kernel mid-cell can surface as DeadKernelError
                if limit < args.timeout:  # the budget ran out, not the notebook's own time: not its failure
                    result.update(passed=None, skipped=f"stopped after {limit:.0f} s: the end of --budget-s "
                                                       f"{args.budget_s:g}")
                else:
                    result["error"] = f"TimeoutError: stopped at {limit:.0f} s (--timeout {args.timeout:g})\n" \
                                      f"{result['error']}"
        result["seconds"] = round(time.monotonic() - start, 2)
        for i, cell in enumerate(nb.cells[:user_cells]):
            timing = cell.get("metadata", {}).get("execution", {})
            stopped = "iopub.execute_input" in timing and "shell.execute_reply" not in timing  # still running
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors or (stopped and not result["passed"]):
                printed = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
                result["failed_cell"] = {  # where and why: the traceback's end holds the failing line and its values
                    "index": i, "source": first_lines(cell.source, 3),
                    "traceback": last_lines("\n".join(errors[0].get("traceback", [])) if errors else "", 16),
                    "printed": last_lines(printed, 12)}
        for out in nb.cells[-1].get("outputs", []):
            text = out.get("text", "")
            if STATS_MARK in text:
                stats = json.loads(text.split(STATS_MARK, 1)[1].splitlines()[0])
                result["cuda_max_memory_allocated"] = stats["max_memory_allocated"]
                result["cuda_max_memory_reserved"] = stats["max_memory_reserved"]
        timed = [(cell_seconds(c), i, c) for i, c in enumerate(nb.cells[:user_cells]) if c.cell_type == "code"]
        timed = sorted((t for t in timed if t[0] is not None), key=lambda t: -t[0])[:3]
        result["slowest_cells"] = [{"index": i, "seconds": round(s, 2), "first_line": c.source.splitlines()[0][:100]}
                                   for s, i, c in timed if c.source]
        if args.executed_dir:
            out_dir = Path(args.executed_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out_dir / f"{notebook.stem}.{model_key}.ipynb")
    return result


def unavailable(needs: list[str], status: dict[str, str]) -> str | None:
    """Why a notebook that needs ``needs`` cannot run here, or None."""
    missing = [f"{n} ({status[n]})" for n in needs if status.get(n, "ok") != "ok"]
    return f"needs {', '.join(missing)}" if missing else None


async def run_notebooks(jobs: list[tuple[Path, str, str]], args, env: dict, status: dict[str, str], doc: dict,
                        save) -> None:
    limit = asyncio.Semaphore(args.jobs)
    runner = unavailable(list(RUNNER), status)
    needs = {nb: notebook_needs(nb) for nb in {job[0] for job in jobs}} if runner is None else {}

    async def one(notebook: Path, key: str, path: str) -> None:
        async with limit:
            left = seconds_left(args.budget_s)
            why = runner or unavailable(needs[notebook], status)
            if why:
                result = notebook_row(notebook, key, skipped=f"executing notebooks {why}" if runner else why)
            elif left < args.min_start_s:
                result = notebook_row(notebook, key, skipped=f"not started: {max(left, 0):.0f} s left of --budget-s "
                                                             f"{args.budget_s:g}")
            else:
                print(f"gpu_check: executing {notebook.stem} on {key}", flush=True)
                result = await run_notebook(notebook, key, path, args, env, min(args.timeout, left))
            said = ("passed" if result["passed"] else f"SKIPPED ({result['skipped']})" if result["passed"] is None
                    else "FAILED")
            print(f"gpu_check: {notebook.stem} on {key}: {said}"
                  + (f" in {result['seconds']} s" if result["seconds"] is not None else ""), flush=True)
            doc["notebooks"].append(result)
            save()

    await asyncio.gather(*(one(*job) for job in jobs))
    order = {(nb.stem, key): i for i, (nb, key, _) in enumerate(jobs)}
    doc["notebooks"].sort(key=lambda r: order[(r["notebook"], r["model"])])


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        notebooks = ([] if args.skip_notebooks
                     else select_notebooks(Path(args.notebook_dir), args.notebooks, args.dry_run, args.dtype))
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU even where a GPU is present; kernels inherit it
    status = package_status(args.without)
    broken = {n: s for n, s in status.items() if n in REQUIRED and s != "ok"}
    if broken:
        print("gpu_check: the check needs " + "; ".join(f"{n}: {s}" for n, s in broken.items()) + ". Install the "
              "course's stack first: `bash course.sh setup`, or on an offline GPU machine the wheel kit that "
              "`bash tools/gpu_kit.sh` prepares.", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    import torch

    import utils

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU here (torch.cuda.is_available() is False), so there is nothing "
              "to check. Run it on a machine with an NVIDIA GPU and torch's CUDA build, or pass --dry-run to run "
              "the same steps on the CPU, small.", file=sys.stderr)
        return 2
    quiet(status)
    device = torch.device("cpu") if args.dry_run else torch.device("cuda")
    try:
        compute_dtype = resolve_dtype(args.dtype, device)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "schema": SCHEMA, "mode": "dry-run" if args.dry_run else "cuda",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "seconds": None,
        "device": machine(device), "versions": versions(status), "packages": status,
        "settings": {"budget_s": args.budget_s, "dtype": args.dtype,
                     "compute_dtype": str(compute_dtype).removeprefix("torch."), "batch_size": args.batch_size,
                     "seq_len": args.seq_len, "timed_steps": args.timed_steps, "jobs": args.jobs,
                     "timeout": args.timeout, "min_start_s": args.min_start_s, "lora_r": LORA_R,
                     "lora_alpha": 2 * LORA_R},
        "models": {}, "measurements": [], "notebooks": [], "summary": {},
    }

    def save() -> None:
        doc["seconds"] = round(time.monotonic() - STARTED, 1)
        rows = doc["measurements"] + doc["notebooks"]
        doc["summary"] = {"passed": sum(r["passed"] is True for r in rows),
                          "failed": sum(r["passed"] is False for r in rows),
                          "skipped": sum(r["passed"] is None for r in rows)}
        write_json(output, doc)

    save()
    print(f"gpu_check: {doc['device']['type']} {doc['device']['name']}, torch {doc['versions']['torch']}, "
          f"CUDA {doc['versions']['cuda']}, computing in {doc['settings']['compute_dtype']} -> {output}", flush=True)
    for name, state in status.items():
        if state != "ok":
            print(f"gpu_check: {name}: {state}; what needs it is skipped", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_models_") as tmp:
        paths: dict[str, str] = {}
        if "bundled" in args.models:
            paths["bundled"] = str(utils.BUNDLED_MODEL)
        if "built" in args.models:
            key = "llama-tiny" if args.dry_run else "llama-125m"
            paths[key] = str(Path(tmp) / key)
            build_llama(Path(paths[key]), *BUILT[key])
        for key, path in paths.items():
            doc["models"][key] = describe_model(Path(path))
            print(f"gpu_check: model {key}: {doc['models'][key]['parameters']:,} parameters", flush=True)
        save()

        if not args.skip_measure:
            measure_all(paths, args, device, compute_dtype, status, doc, save)

        if notebooks:
            env = dict(os.environ)
            if "OMP_NUM_THREADS" not in env:
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
            if args.dtype != "auto":
                env["COURSE_DTYPE"] = args.dtype  # read by utils.compute_dtype on CUDA
            # a dry run checks the notebooks on the bundled model only (the tiny built one is for measurement)
            keys = [k for k in paths if not (args.dry_run and k != "bundled")] or list(paths)[:1]
            jobs = [(nb, key, paths[key]) for key in keys for nb in notebooks]
            asyncio.run(run_notebooks(jobs, args, env, status, doc, save))
    save()
    s = doc["summary"]
    print(f"gpu_check: {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped in {doc['seconds']} s; "
          f"wrote {output}", flush=True)
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
