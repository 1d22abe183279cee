"""The course on a CUDA GPU, in one run: every notebook, two models, and directly measured training steps.

    python tools/gpu_check.py [--output gpu_check.json] [--notebooks 00 05_lora ...] [--timeout 300] ...
    python tools/gpu_check.py --dry-run      # no GPU: the same code path on the CPU, small

What it does, in this order, writing everything it has found to one JSON file after each step (so a run
stopped at its time limit still leaves its results):

1. The machine: the device's name and compute capability, torch, CUDA and the course's libraries' versions.
2. The models: the bundled ``data/kjv-llama`` and a Llama-architecture model of about 125M parameters built
   from its config with the bundled tokenizer and random weights (a GPU machine may have no internet, so no
   hub model is assumed). ``--dry-run`` builds a tiny one instead.
3. Direct measurement with ``utils.measure_training_step`` on each model: full fine-tune (fp32), LoRA on an
   fp32 base, QLoRA (NF4 + double quantization) and QLoRA with gradient checkpointing, the set-ups of
   notebook 06. For each: the step's weights, gradients, optimizer states, activations and peak as
   ``utils`` reports them, the allocator's own ``torch.cuda.max_memory_allocated`` over the warm-up and
   measured step (reset after loading), what was allocated before loading and what utils counted as not
   the measured model's (``MemoryTrace.other_bytes``: other models left on the
   device), the median time of unprofiled steps and the loss (it must be finite).
4. Every notebook (``notebooks/NN_*.ipynb``) executed with nbclient on each model (``COURSE_MODEL`` set
   for the kernel), each in a copy folder of its own, so that committed notebooks and their
   ``notebooks/outputs/`` are never written. A cell appended to the copy reads the kernel's CUDA peak.
   Recorded: passed or not, wall time, the first lines of the error, the slowest cells, the CUDA peak.

Exit status: 0 when every measurement and notebook passed, 1 when one failed or was skipped for time,
2 when the check cannot run here (no CUDA without ``--dry-run``, a missing package, a filter matching no
notebook). Needs the packages of ``requirements-dev.txt`` (nbclient and ipykernel come with them).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import importlib.util
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

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCHEMA = 1
SETUPS = ("full fp32", "LoRA (fp32 base)", "QLoRA", "QLoRA + checkpointing")
NEEDED = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate",
          "nbformat", "nbclient", "ipykernel", "matplotlib")
VERSIONS = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "nbclient")
# Built models: hidden, layers, heads, intermediate. With the bundled tokenizer's small vocabulary the
# ~125M parameters sit in the blocks (GPT-Neo-125M has the same width and depth but 39M of its 125M in
# a 50k-token embedding).
BUILT = {"llama-125m": (768, 12, 12, 3456), "llama-tiny": (64, 2, 4, 128)}
LORA_R, LORA_ALPHA = 8, 16
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
    p.add_argument("--notebooks", nargs="+", metavar="NN_OR_STEM",
                   help="only the notebooks whose name starts with one of these (e.g. 00 05_lora); default all, "
                        "00 in a dry run")
    p.add_argument("--models", nargs="+", choices=("bundled", "built"),
                   help="the models to check (default: both; a dry run runs notebooks on the bundled one only)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds one notebook may run before it counts as failed (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=420,
                   help="the whole run's time: a notebook still running then is stopped (failed), one not yet "
                        "started is recorded as skipped (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None,
                   help="notebooks executed at once (default: 4 on CUDA, 1 in a dry run)")
    p.add_argument("--batch-size", type=int, default=None, help="measured batch (default: 8 on CUDA, 2 in a dry run)")
    p.add_argument("--seq-len", type=int, default=None, help="measured sequence length (default: 256, 32 in a dry run)")
    p.add_argument("--timed-steps", type=int, default=None,
                   help="unprofiled steps whose median time is the step time (default: 5, 2 in a dry run)")
    p.add_argument("--skip-notebooks", action="store_true", help="only the direct measurement")
    p.add_argument("--skip-measure", action="store_true", help="only the notebooks")
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
    if args.jobs < 1 or args.timeout <= 0 or args.max_seconds <= 0:
        p.error("--jobs, --timeout and --max-seconds must be positive")
    return args


def select_notebooks(folder: Path, prefixes: list[str] | None, dry_run: bool) -> list[Path]:
    """The notebooks in ``folder`` whose stem starts with one of ``prefixes`` (default: all; 00 in a dry run)."""
    every = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not every:
        raise ValueError(f"no NN_*.ipynb notebook in {folder}")
    prefixes = prefixes or (["00"] if dry_run else None)
    if not prefixes:
        return every
    chosen = [nb for nb in every if any(nb.stem.startswith(p.removesuffix(".ipynb")) for p in prefixes)]
    if not chosen:
        raise ValueError(f"--notebooks {' '.join(prefixes)} matches no notebook; there are: "
                         f"{', '.join(nb.stem for nb in every)}")
    return chosen


def missing_packages() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def write_json(path: Path, doc: dict) -> None:
    """Write atomically, so that a run killed mid-write still leaves the previous complete file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def first_lines(text: str, n: int = 8) -> str:
    lines = [line.rstrip() for line in ANSI.sub("", text).strip().splitlines() if line.strip()]
    return "\n".join(lines[:n])


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


def versions() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for name in VERSIONS:
        out[name] = importlib.import_module(name).__version__
    return out


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


# ---------------------------------------------------------------- direct measurement

def setup_model(kind: str, name: str, device, dtype):
    """One of notebook 06's four set-ups, in train mode."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    import utils

    def lora():
        return LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")

    utils.seed_everything(0)
    if kind == "full fp32":
        model = utils.load_model(name, dtype=torch.float32, device=device)[0]
    elif kind == "LoRA (fp32 base)":
        model = get_peft_model(utils.load_model(name, dtype=torch.float32, device=device)[0], lora())
    else:
        half = dtype if dtype != torch.float32 else torch.float16
        base = utils.load_model(name, quantization_config=utils.nf4_config(dtype), dtype=half, device=device)[0]
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=kind.endswith("checkpointing"),
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(base, lora())
    return model.train()


def lm_batch(name: str, batch_size: int, seq_len: int, device) -> dict:
    """``batch_size`` consecutive chunks of held-out text, labels = inputs."""
    from transformers import AutoTokenizer

    import utils

    tok = AutoTokenizer.from_pretrained(name)
    ids = tok(utils.heldout_text()[: 40 * batch_size * seq_len], return_tensors="pt").input_ids[0]
    if ids.numel() < batch_size * seq_len:
        raise ValueError(f"the held-out text gives {ids.numel()} tokens, fewer than {batch_size} x {seq_len}")
    ids = ids[: batch_size * seq_len].view(batch_size, seq_len).clone().to(device)
    return {"input_ids": ids, "labels": ids}


def measure(kind: str, name: str, batch: dict, device, dtype, timed_steps: int) -> dict[str, Any]:
    import gc

    import torch

    import utils

    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    before_load = torch.cuda.memory_allocated(device) if cuda else None
    model = setup_model(kind, name, device, dtype)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step = utils.measure_training_step(model, batch, opt, warmup_steps=1)
    allocator_peak = torch.cuda.max_memory_allocated(device) if cuda else None
    times, loss = [], float("nan")
    for _ in range(timed_steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        loss = out.loss.item()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model, opt, out
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    seconds = statistics.median(times)
    result = {
        "trainable_parameters": trainable,
        "weights": step.weights, "gradients": step.gradients, "optimizer_states": step.optimizer_states,
        "activations": step.activations, "peak": step.peak, "peak_source": step.trace.source,
        "held_before_step": step.trace.baseline, "profiled_step_seconds": step.seconds,
        "step_seconds": seconds, "tokens_per_second": batch["input_ids"].numel() / seconds, "loss": loss,
        "cuda_memory_allocated_before_load": before_load, "cuda_max_memory_allocated": allocator_peak,
        "cuda_other_bytes": getattr(step.trace, "other_bytes", None),  # on the device, not the measured model's
        "cuda_memory_allocated_after_free": torch.cuda.memory_allocated(device) if cuda else None,
    }
    if loss != loss or loss in (float("inf"), float("-inf")):
        raise FloatingPointError(f"the loss is {loss} after {timed_steps} steps")
    return result


# ---------------------------------------------------------------- notebooks

def copy_tree(workdir: Path, notebook: Path) -> Path:
    """``workdir`` with links to the repository's top-level entries and a notebooks/ folder of its own."""
    for entry in ROOT.iterdir():
        if entry.name not in ("notebooks", ".git", ".venv") and not entry.name.startswith("gpu_check"):
            (workdir / entry.name).symlink_to(entry)
    (workdir / "notebooks").mkdir()
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


async def run_notebook(notebook: Path, model_key: str, model_path: str, args, env: dict,
                       limit: float) -> dict[str, Any]:
    """Execute a copy of ``notebook`` with ``COURSE_MODEL=model_path``, stopping it after ``limit`` seconds."""
    import nbformat
    from nbclient import NotebookClient

    result: dict[str, Any] = {"notebook": notebook.stem, "model": model_key, "passed": False, "seconds": None,
                              "error": None, "failed_cell": None, "cuda_max_memory_allocated": None,
                              "cuda_max_memory_reserved": None, "slowest_cells": []}
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
            if time.monotonic() - start >= limit:  # stopping a kernel mid-cell can surface as DeadKernelError
                which = f"--timeout {args.timeout:g} s" if limit == args.timeout else f"--max-seconds {args.max_seconds:g}"
                result["error"] = f"TimeoutError: stopped at {limit:.0f} s ({which})\n{result['error']}"
        result["seconds"] = round(time.monotonic() - start, 2)
        for i, cell in enumerate(nb.cells[:user_cells]):
            timing = cell.get("metadata", {}).get("execution", {})
            stopped = "iopub.execute_input" in timing and "shell.execute_reply" not in timing  # still running
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])) or (stopped and not result["passed"]):
                result["failed_cell"] = {"index": i, "source": first_lines(cell.source, 3)}
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


async def run_notebooks(jobs: list[tuple[Path, str, str]], args, env: dict, doc: dict, save, t0: float) -> None:
    limit = asyncio.Semaphore(args.jobs)

    async def one(notebook: Path, key: str, path: str) -> None:
        async with limit:
            remaining = args.max_seconds - (time.monotonic() - t0)
            if remaining < 10:
                result = {"notebook": notebook.stem, "model": key, "passed": None, "seconds": None,
                          "error": f"skipped: less than 10 s left of --max-seconds {args.max_seconds:g}",
                          "failed_cell": None, "cuda_max_memory_allocated": None,
                          "cuda_max_memory_reserved": None, "slowest_cells": []}
            else:
                print(f"gpu_check: executing {notebook.stem} on {key}", flush=True)
                result = await run_notebook(notebook, key, path, args, env, min(args.timeout, remaining))
                print(f"gpu_check: {notebook.stem} on {key}: {'passed' if result['passed'] else 'FAILED'} "
                      f"in {result['seconds']} s", flush=True)
            doc["notebooks"].append(result)
            save()

    await asyncio.gather(*(one(*job) for job in jobs))
    order = {(nb.stem, key): i for i, (nb, key, _) in enumerate(jobs)}
    doc["notebooks"].sort(key=lambda r: order[(r["notebook"], r["model"])])


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        notebooks = [] if args.skip_notebooks else select_notebooks(Path(args.notebook_dir), args.notebooks, args.dry_run)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    missing = missing_packages()
    if missing:
        print(f"gpu_check: missing Python packages: {', '.join(missing)}. Install the course's stack first: "
              "`bash course.sh setup` (or pip install -r requirements-dev.txt).", file=sys.stderr)
        return 2
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU even where a GPU is present; kernels inherit it
    sys.path.insert(0, str(ROOT))
    import torch

    import utils

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU here (torch.cuda.is_available() is False), so there is nothing "
              "to check. Run it on a machine with an NVIDIA GPU and torch's CUDA build, or pass --dry-run to run "
              "the same steps on the CPU, small.", file=sys.stderr)
        return 2
    utils.quiet()
    t0 = time.monotonic()
    device = torch.device("cpu") if args.dry_run else torch.device("cuda")
    dtype = utils.compute_dtype(device)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "schema": SCHEMA, "mode": "dry-run" if args.dry_run else "cuda",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "seconds": None,
        "device": machine(device), "versions": versions(),
        "settings": {"batch_size": args.batch_size, "seq_len": args.seq_len, "timed_steps": args.timed_steps,
                     "jobs": args.jobs, "timeout": args.timeout, "max_seconds": args.max_seconds,
                     "lora_r": LORA_R, "lora_alpha": LORA_ALPHA},
        "models": {}, "measurements": [], "notebooks": [], "summary": {},
    }

    def save() -> None:
        doc["seconds"] = round(time.monotonic() - t0, 1)
        rows = doc["measurements"] + doc["notebooks"]
        doc["summary"] = {"passed": sum(r["passed"] is True for r in rows),
                          "failed": sum(r["passed"] is False for r in rows),
                          "skipped": sum(r["passed"] is None for r in rows)}
        write_json(output, doc)

    save()
    print(f"gpu_check: {doc['device']['type']} {doc['device']['name']}, torch {doc['versions']['torch']}, "
          f"CUDA {doc['versions']['cuda']} -> {output}", flush=True)
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
            for key, path in paths.items():
                seq_len = min(args.seq_len, doc["models"][key]["config"]["max_position_embeddings"] or args.seq_len)
                batch = lm_batch(path, args.batch_size, seq_len, device)
                for kind in SETUPS:
                    row: dict[str, Any] = {"model": key, "setup": kind, "passed": False, "error": None,
                                           "batch": [args.batch_size, seq_len]}
                    start = time.monotonic()
                    try:
                        row.update(measure(kind, path, batch, device, dtype, args.timed_steps))
                        row["passed"] = True
                    except Exception as e:
                        row["error"] = first_lines(f"{type(e).__name__}: {e}\n" + traceback.format_exc()[-1500:])
                    row["seconds"] = round(time.monotonic() - start, 2)
                    doc["measurements"].append(row)
                    save()
                    print(f"gpu_check: measured {kind} on {key}: "
                          + (f"peak {utils.format_bytes(row['peak'])}, step {row['step_seconds'] * 1e3:.1f} ms"
                             if row["passed"] else "FAILED " + row["error"].splitlines()[0]), flush=True)
                del batch

        if notebooks:
            env = dict(os.environ)
            if "OMP_NUM_THREADS" not in env:
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
            # a dry run checks the notebooks on the bundled model only (the tiny built one is for measurement)
            keys = [k for k in paths if not (args.dry_run and k != "bundled")] or list(paths)[:1]
            jobs = [(nb, key, paths[key]) for nb in notebooks for key in keys]
            asyncio.run(run_notebooks(jobs, args, env, doc, save, t0))
    save()
    s = doc["summary"]
    print(f"gpu_check: {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped in {doc['seconds']} s; "
          f"wrote {output}", flush=True)
    return 0 if s["failed"] == 0 and s["skipped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
