"""The prepared GPU check (tools/gpu_check.py), run here as its CPU dry run.

The dry run takes the code path of the real check: the machine's description, the bundled model and a model
built from config, the four measured set-ups of notebook 06 with the estimator's prediction beside each
measurement, notebooks executed in copy folders with the kernel's statistics cell appended. Here it runs
notebook 00 and, next to it, a planted notebook that fails and one that needs a package the run is told to
do without, so that the error report and the skip rule are checked too. Two short runs check the time
budget and the fp16 path (the gradient scaler). What only a GPU shows (CUDA peaks, bf16 steps) is not
tested here.
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

from tools import gpu_check
from utils import device as D

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"
NB00 = ROOT / "notebooks" / "00_setup.ipynb"
SETUPS = ["full fp32", "LoRA (fp32 base)", "QLoRA", "QLoRA + checkpointing"]
PARTS = ("weights", "gradients", "optimizer_states", "activations", "peak")
NOTEBOOK_KEYS = {"notebook", "model", "passed", "skipped", "seconds", "error", "failed_cell",
                 "cuda_max_memory_allocated", "cuda_max_memory_reserved", "slowest_cells"}
MEASUREMENT_KEYS = {"model", "setup", "dtype", "grad_scaler", "passed", "skipped", "error", "batch", "seconds",
                    "recipe", "recipe_fields", "trainable_parameters", "measured", "predicted", "relative_error",
                    "timing", "cuda"}
# The estimator on the CPU (utils/estimator/README.md: weights, gradients, states and saved activations exactly,
# the peak within 1% on the models it builds); here on the bundled checkpoint and a built one, a little slack.
PEAK_TOLERANCE = 0.03


def run(*args, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    env.pop("COURSE_DTYPE", None)
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
    """The dry run over the real notebook 00, a planted failing notebook and a planted one that needs trl,
    run with ``--without trl``; (exit code, JSON, output)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    notebooks = tmp / "notebooks"
    notebooks.mkdir()
    shutil.copyfile(NB00, notebooks / NB00.name)
    planted = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                              nbformat.v4.new_code_cell("print('x is', x)\nraise ValueError(f'planted failure {x + 1}')")])
    nbformat.write(planted, notebooks / "01_planted.ipynb")
    needs_trl = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("from trl import SFTConfig")])
    nbformat.write(needs_trl, notebooks / "02_needs_trl.ipynb")
    before = hashlib.sha256(NB00.read_bytes()).hexdigest()
    out = tmp / "check.json"
    proc = run("--dry-run", "--output", str(out), "--notebook-dir", str(notebooks), "--notebooks", "00", "01", "02",
               "--without", "trl", "--budget-s", "1200")
    assert hashlib.sha256(NB00.read_bytes()).hexdigest() == before, "the committed notebook was written"
    assert out.is_file(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


def test_dry_run_describes_the_machine_models_and_packages(dry_run):
    _, doc, _ = dry_run
    assert doc["schema"] == 2 and doc["mode"] == "dry-run" and doc["seconds"] > 0
    assert doc["device"] == {"type": "cpu", "compute_dtype": "torch.float32", "name": doc["device"]["name"],
                             "compute_capability": None, "total_memory_bytes": None}
    assert doc["settings"]["dtype"] == "auto" and doc["settings"]["compute_dtype"] == "float32"
    assert doc["settings"]["budget_s"] == 1200
    versions = doc["versions"]
    assert versions["torch"] == torch.__version__ and versions["cuda"] is None
    for name in ("transformers", "peft", "bitsandbytes", "accelerate", "datasets", "nbclient", "python"):
        assert isinstance(versions[name], str) and versions[name][0].isdigit(), name
    assert versions["trl"] is None  # --without trl
    assert doc["packages"].pop("trl") == "left out (--without)"
    assert set(doc["packages"].values()) == {"ok"}
    assert set(doc["models"]) == {"bundled", "llama-tiny"}
    for key, model in doc["models"].items():
        assert model["config"]["model_type"] == "llama"
        assert model["parameters"] == llama_parameters(model["config"]), key
    assert doc["models"]["bundled"]["path"] == str(ROOT / "data" / "kjv-llama")


def test_dry_run_measures_four_setups_on_each_model_beside_the_estimate(dry_run):
    _, doc, _ = dry_run
    rows = {(m["model"], m["setup"]): m for m in doc["measurements"]}
    assert list(rows) == [(k, s) for k in ("bundled", "llama-tiny") for s in SETUPS]
    for (key, setup), m in rows.items():
        assert set(m) == MEASUREMENT_KEYS, (key, setup)
        assert m["passed"] is True and m["error"] is None and m["skipped"] is None, m["error"]
        assert m["batch"] == [2, 32] and m["dtype"] == "float32" and m["grad_scaler"] is False
        measured, predicted, error = m["measured"], m["predicted"], m["relative_error"]
        assert measured["peak_source"] == "torch.profiler memory events"
        assert measured["peak"] >= measured["held_before_step"] >= measured["weights"] > 0
        assert predicted["device"] == "cpu" and predicted["overhead"] == 0
        assert predicted["total"] == predicted["peak"] == sum(predicted["peak_parts"].values())
        assert m["recipe_fields"]["device"] == "cpu" and m["recipe_fields"]["batch_size"] == 2
        assert predicted["trainable_parameters"] == m["trainable_parameters"]
        for part in PARTS:  # side by side, and the error is theirs
            assert error[part] == pytest.approx((predicted[part] - measured[part]) / measured[part], abs=1e-5)
        for part in ("weights", "gradients", "optimizer_states", "activations"):
            assert predicted[part] == measured[part], (key, setup, part)
        assert abs(error["peak"]) <= PEAK_TOLERANCE, (key, setup, error["peak"])
        timing = m["timing"]
        assert timing["step_seconds"] > 0 and measured["profiled_step_seconds"] > 0
        assert math.isfinite(timing["loss"]) and len(timing["losses"]) == 3  # warm-up + 2 timed
        assert timing["tokens_per_second"] == pytest.approx(64 / timing["step_seconds"])
        assert timing["grad_scaler"] is None and m["cuda"] is None
    for key in ("bundled", "llama-tiny"):
        full, lora, qlora, ckpt = (rows[key, s] for s in SETUPS)
        n = doc["models"][key]["parameters"]
        assert full["trainable_parameters"] == n
        assert full["measured"]["weights"] == full["measured"]["gradients"] == 4 * n  # fp32, every parameter
        assert full["measured"]["optimizer_states"] >= 2 * full["measured"]["weights"]  # AdamW: two fp32 states
        assert lora["trainable_parameters"] == qlora["trainable_parameters"] == ckpt["trainable_parameters"] < n
        assert lora["measured"]["gradients"] < full["measured"]["gradients"]
        assert qlora["measured"]["weights"] < lora["measured"]["weights"], "NF4 should store the linear layers in less"
        assert ckpt["measured"]["activations"] < qlora["measured"]["activations"], "checkpointing saves fewer"
        assert full["measured"]["peak"] > lora["measured"]["peak"] > ckpt["measured"]["peak"]
        assert qlora["recipe"].startswith("QLoRA") and "+ckpt" in ckpt["recipe"] and "+ckpt" not in qlora["recipe"]


def test_dry_run_executes_notebooks_and_reports_a_failure_and_a_skip(dry_run):
    code, doc, output = dry_run
    assert code == 1, output  # the planted failure
    assert doc["summary"] == {"passed": 9, "failed": 1, "skipped": 1}
    rows = {r["notebook"]: r for r in doc["notebooks"]}
    assert list(rows) == ["01_planted", "02_needs_trl", "00_setup"]  # gpu_check.PRIORITY: 01 and 02 before 00
    for row in rows.values():
        assert set(row) == NOTEBOOK_KEYS and row["model"] == "bundled"
        assert row["cuda_max_memory_allocated"] is None
    bad, skipped, ok = rows.values()
    assert ok["passed"] is True and ok["error"] is None and ok["skipped"] is None and ok["seconds"] > 0
    assert ok["failed_cell"] is None and len(ok["slowest_cells"]) == 3
    assert all(c["seconds"] >= 0 and c["first_line"] for c in ok["slowest_cells"])
    assert bad["passed"] is False and bad["skipped"] is None
    assert "ValueError" in bad["error"] and "planted failure" in bad["error"]
    cell = bad["failed_cell"]  # the failing line and the values printed before it, not only the cell's start
    assert cell["index"] == 1 and cell["source"] == "print('x is', x)\nraise ValueError(f'planted failure {x + 1}')"
    assert cell["printed"] == "x is 1" and cell["traceback"].endswith("ValueError: planted failure 2")
    assert "raise ValueError(f'planted failure {x + 1}')" in cell["traceback"]
    assert skipped["passed"] is None and skipped["seconds"] is None
    assert skipped["skipped"] == "needs trl (left out (--without))"
    assert "02_needs_trl on bundled: SKIPPED (needs trl" in output


def test_the_budget_skips_what_it_cannot_hold(tmp_path):
    """A budget spent before the first step: every step and notebook is skipped, saying why, and nothing failed."""
    out = tmp_path / "x.json"
    proc = run("--dry-run", "--models", "bundled", "--budget-s", "0.01", "--output", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["summary"] == {"passed": 0, "failed": 0, "skipped": 5}
    for row in doc["measurements"]:
        assert row["passed"] is None and "left of --budget-s 0.01" in row["skipped"] and "measured" not in row
    (nb,) = doc["notebooks"]
    assert nb["notebook"] == "00_setup" and nb["passed"] is None
    assert nb["skipped"].startswith("not started: 0 s left of --budget-s 0.01")


def test_fp16_steps_run_with_a_gradient_scaler(tmp_path):
    out = tmp_path / "x.json"
    proc = run("--dry-run", "--dtype", "fp16", "--models", "built", "--skip-notebooks", "--output", str(out),
               timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["settings"]["dtype"] == "fp16" and doc["settings"]["compute_dtype"] == "float16"
    rows = {m["setup"]: m for m in doc["measurements"]}
    assert list(rows) == SETUPS and all(m["passed"] for m in rows.values())
    for setup, m in rows.items():
        scaler = m["timing"]["grad_scaler"]
        if setup.startswith("QLoRA"):
            assert m["dtype"] == "float16" and m["grad_scaler"] is True
            assert m["recipe_fields"]["precision"] == "bf16"  # 16-bit base: fp16 costs the bytes bf16 does
            assert scaler["scale"] > 0 and 0 <= scaler["steps_skipped"] <= 3
            assert m["predicted"]["weights"] == m["measured"]["weights"]
        else:
            assert scaler is None and m["grad_scaler"] is False and m["recipe_fields"]["precision"] == "fp32"


def test_no_matching_notebook_is_a_clear_error():
    proc = run("--dry-run", "--notebooks", "99_nothing", timeout=120)
    assert proc.returncode == 2 and "matches no notebook" in proc.stderr and "00_setup" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_says_to_use_dry_run(tmp_path):
    proc = run("--output", str(tmp_path / "x.json"), timeout=300)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_notebooks_run_by_priority_and_a_forced_dtype_picks_06():
    every = gpu_check.select_notebooks(ROOT / "notebooks", None, dry_run=False)
    assert [nb.stem[:2] for nb in every[:2]] == ["06", "04"] and len(every) == len(list(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")))
    assert [nb.stem for nb in gpu_check.select_notebooks(ROOT / "notebooks", None, False, "fp16")] == ["06_qlora"]
    assert gpu_check.notebook_needs(ROOT / "notebooks" / "06_qlora.ipynb") == ["datasets", "trl", "bitsandbytes",
                                                                              "matplotlib"]


def test_a_notebooks_copy_folder_reaches_the_scripts_it_launches(tmp_path):
    """Notebook 09 launches notebooks/scripts/fsdp_step.py: the copy folder the check executes it in has it."""
    copy = gpu_check.copy_tree(tmp_path, ROOT / "notebooks" / "09_sharding_fsdp.ipynb")
    assert (copy.parent / "scripts" / "fsdp_step.py").is_file()
    assert (tmp_path / "utils" / "__init__.py").is_file() and not (tmp_path / ".git").exists()


@pytest.mark.parametrize("value, expected", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                             ("auto", torch.bfloat16)])
def test_course_dtype_overrides_the_gpu_choice(monkeypatch, value, expected):
    """COURSE_DTYPE, which the check sets for the notebooks' kernels: an H100 computes as a T4 with fp16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setenv(D.DTYPE_ENV, value)
    assert D.compute_dtype(torch.device("cuda")) is expected
    assert D.mixed_precision_flags(torch.device("cuda")) == {"bf16": expected is torch.bfloat16,
                                                            "fp16": expected is torch.float16}
    assert D.compute_dtype(torch.device("cpu")) is torch.float32  # the CPU keeps fp32 whatever it says
