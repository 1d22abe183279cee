"""The prepared GPU check (tools/gpu_check.py), run here as its CPU dry run.

The dry run takes the code path of the real check: the machine's description, the bundled model and a model
built from config, the four measured set-ups of notebook 06, notebooks executed in copy folders with the
kernel's statistics cell appended. Here it runs notebook 00 and, next to it, a planted notebook that fails,
so that the error report is checked too. What only a GPU shows (CUDA peaks, bf16 steps) is not tested here.
"""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"
NB00 = ROOT / "notebooks" / "00_setup.ipynb"
SETUPS = ["full fp32", "LoRA (fp32 base)", "QLoRA", "QLoRA + checkpointing"]
NOTEBOOK_KEYS = {"notebook", "model", "passed", "seconds", "error", "failed_cell", "cuda_max_memory_allocated",
                 "cuda_max_memory_reserved", "slowest_cells"}
MEASUREMENT_KEYS = {"model", "setup", "passed", "error", "batch", "seconds", "trainable_parameters", "weights",
                    "gradients", "optimizer_states", "activations", "peak", "peak_source", "held_before_step",
                    "profiled_step_seconds", "step_seconds", "tokens_per_second", "loss",
                    "cuda_memory_allocated_before_load", "cuda_max_memory_allocated", "cuda_other_bytes",
                    "cuda_memory_allocated_after_free"}


def run(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def llama_parameters(c: dict) -> int:
    """Parameters of a tied-embedding Llama with bias-free layers, from its config."""
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    block = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    return c["vocab_size"] * h + layers * block + h


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The dry run over the real notebook 00 and a planted failing notebook; (exit code, JSON, output)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    notebooks = tmp / "notebooks"
    notebooks.mkdir()
    shutil.copyfile(NB00, notebooks / NB00.name)
    planted = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                              nbformat.v4.new_code_cell("raise ValueError('planted failure')")])
    nbformat.write(planted, notebooks / "01_planted.ipynb")
    before = hashlib.sha256(NB00.read_bytes()).hexdigest()
    out = tmp / "check.json"
    proc = run("--dry-run", "--output", str(out), "--notebook-dir", str(notebooks), "--notebooks", "00", "01")
    assert hashlib.sha256(NB00.read_bytes()).hexdigest() == before, "the committed notebook was written"
    assert out.is_file(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


def test_dry_run_describes_the_machine_and_models(dry_run):
    _, doc, _ = dry_run
    assert doc["schema"] == 1 and doc["mode"] == "dry-run" and doc["seconds"] > 0
    assert doc["device"] == {"type": "cpu", "compute_dtype": "torch.float32", "name": doc["device"]["name"],
                             "compute_capability": None, "total_memory_bytes": None}
    versions = doc["versions"]
    assert versions["torch"] == torch.__version__ and versions["cuda"] is None
    for name in ("transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "nbclient", "python"):
        assert isinstance(versions[name], str) and versions[name][0].isdigit(), name
    assert set(doc["models"]) == {"bundled", "llama-tiny"}
    for key, model in doc["models"].items():
        assert model["config"]["model_type"] == "llama"
        assert model["parameters"] == llama_parameters(model["config"]), key
    assert doc["models"]["bundled"]["path"] == str(ROOT / "data" / "kjv-llama")


def test_dry_run_measures_four_setups_on_each_model(dry_run):
    _, doc, _ = dry_run
    rows = {(m["model"], m["setup"]): m for m in doc["measurements"]}
    assert list(rows) == [(k, s) for k in ("bundled", "llama-tiny") for s in SETUPS]
    for (key, setup), m in rows.items():
        assert set(m) == MEASUREMENT_KEYS, (key, setup)
        assert m["passed"] is True and m["error"] is None, m["error"]
        assert m["batch"] == [2, 32]
        assert m["peak_source"] == "torch.profiler memory events"
        assert m["peak"] >= m["held_before_step"] >= m["weights"] > 0
        assert m["step_seconds"] > 0 and m["profiled_step_seconds"] > 0 and math.isfinite(m["loss"])
        assert m["tokens_per_second"] == pytest.approx(64 / m["step_seconds"])
        assert m["cuda_max_memory_allocated"] is None and m["cuda_memory_allocated_before_load"] is None
        assert m["cuda_other_bytes"] is None
    for key in ("bundled", "llama-tiny"):
        full, lora, qlora, ckpt = (rows[key, s] for s in SETUPS)
        n = doc["models"][key]["parameters"]
        assert full["trainable_parameters"] == n
        assert full["weights"] == full["gradients"] == 4 * n  # fp32, every parameter trained
        assert full["optimizer_states"] >= 2 * full["weights"]  # AdamW: two fp32 states per parameter
        assert lora["trainable_parameters"] == qlora["trainable_parameters"] == ckpt["trainable_parameters"] < n
        assert lora["gradients"] < full["gradients"] and lora["optimizer_states"] < full["optimizer_states"]
        assert qlora["weights"] < lora["weights"], "NF4 should store the linear layers in less than fp32"
        assert ckpt["activations"] < qlora["activations"], "checkpointing should save fewer activations"
        assert full["peak"] > lora["peak"] > ckpt["peak"]


def test_dry_run_executes_notebooks_and_reports_a_failure(dry_run):
    code, doc, output = dry_run
    assert code == 1, output  # the planted failure
    assert doc["summary"] == {"passed": 9, "failed": 1, "skipped": 0}
    ok, bad = doc["notebooks"]
    for row in (ok, bad):
        assert set(row) == NOTEBOOK_KEYS and row["model"] == "bundled" and row["seconds"] > 0
        assert row["cuda_max_memory_allocated"] is None
    assert ok["notebook"] == "00_setup" and ok["passed"] is True and ok["error"] is None
    assert ok["failed_cell"] is None and len(ok["slowest_cells"]) == 3
    assert all(c["seconds"] >= 0 and c["first_line"] for c in ok["slowest_cells"])
    assert bad["notebook"] == "01_planted" and bad["passed"] is False
    assert "ValueError" in bad["error"] and "planted failure" in bad["error"]
    assert bad["failed_cell"] == {"index": 1, "source": "raise ValueError('planted failure')"}


def test_no_matching_notebook_is_a_clear_error():
    proc = run("--dry-run", "--notebooks", "99_nothing", timeout=120)
    assert proc.returncode == 2 and "matches no notebook" in proc.stderr and "00_setup" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_says_to_use_dry_run(tmp_path):
    proc = run("--output", str(tmp_path / "x.json"), timeout=300)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "x.json").exists()
