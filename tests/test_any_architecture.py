"""Every notebook runs top to bottom on other architectures than the bundled Llama.

Tiny random-weight models are built from their configs with the bundled tokenizer, and each notebook is
executed with ``COURSE_MODEL`` pointing at one. Outputs are not compared (the numbers are another model's);
every cell must run and every structural ``assert`` must hold, so a cell written for one architecture fails here.

- ``gpt-neo`` (the architecture of ``EleutherAI/gpt-neo-125m``, which the README suggests on Colab) runs by
  default, in CI.
- ``gpt2`` (``Conv1D`` layers that store the transposed weight), ``opt`` (a projection around the
  embeddings, ReLU MLP) and ``qwen2`` (Llama-style with biases on q, k and v; the Qwen2.5 models many
  learners pick) run when named:
  ``COURSE_ARCHITECTURES=gpt-neo,gpt2,opt,qwen2 bash course.sh test-units -k any_architecture``.

The fine-tunes train for half their ``MAX_STEPS`` (the notebook's parameters cell, rewritten before it
runs, as papermill would): what is tested is that every cell runs on the architecture, not how far a random
model gets; the asserts on what training achieves are written for any model and still hold.

``course.sh`` runs these tests two at a time (pytest-xdist), one thread each: every kernel inherits the
worker's environment, ``OMP_NUM_THREADS=1`` and ``COURSE_MODEL`` included.
"""
import os
import re
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ARCHITECTURES = ("gpt-neo", "gpt2", "opt", "qwen2")
CHOSEN = [a.strip() for a in os.environ.get("COURSE_ARCHITECTURES", "gpt-neo").split(",") if a.strip()]
if unknown := set(CHOSEN) - set(ARCHITECTURES):
    raise ValueError(f"COURSE_ARCHITECTURES names {sorted(unknown)}: choose from {', '.join(ARCHITECTURES)}")


def _config(arch: str, tok):
    """A 4-block model of ``arch``, hidden 256, 4 heads, 256 positions, the bundled tokenizer's vocabulary."""
    from transformers import GPT2Config, GPTNeoConfig, OPTConfig, Qwen2Config

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "gpt-neo":  # global and local attention, biases
        return GPTNeoConfig(vocab_size=len(tok), hidden_size=256, num_layers=4, num_heads=4, window_size=64,
                            attention_types=[[["global", "local"], 2]], max_position_embeddings=256, **ids)
    if arch == "gpt2":
        return GPT2Config(vocab_size=len(tok), n_embd=256, n_layer=4, n_head=4, n_positions=256, **ids)
    if arch == "qwen2":  # grouped-query attention, tied embeddings, as Qwen2.5-0.5B
        return Qwen2Config(vocab_size=len(tok), hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=704, max_position_embeddings=256,
                           tie_word_embeddings=True, **ids)
    return OPTConfig(vocab_size=len(tok), hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024,
                     max_position_embeddings=256, word_embed_proj_dim=128, **ids)  # 128: OPT-350m's projection


STEPS_SHARE = 2  # the architecture runs train for 1 / STEPS_SHARE of MAX_STEPS


def fewer_steps(nb: nbformat.NotebookNode) -> int:
    """Rewrite ``MAX_STEPS = N`` in the cell tagged ``parameters`` to N // STEPS_SHARE; returns how many it did."""
    done = 0
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source, n = re.subn(r"^MAX_STEPS = (\d+)",
                                     lambda m: f"MAX_STEPS = {int(m[1]) // STEPS_SHARE}", cell.source, flags=re.M)
            done += n
    return done


def test_fewer_steps_rewrites_the_parameters_cell_only():
    parameters = nbformat.v4.new_code_cell("MAX_STEPS = 100  # steps\nLR = 1", metadata={"tags": ["parameters"]})
    nb = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell("MAX_STEPS = 100")])
    assert fewer_steps(nb) == 1
    assert nb.cells[0].source == f"MAX_STEPS = {100 // STEPS_SHARE}  # steps\nLR = 1"
    assert nb.cells[1].source == "MAX_STEPS = 100"


@pytest.fixture(scope="module", params=CHOSEN)
def model_dir(request, tmp_path_factory) -> Path:
    """A random-weight folder of one architecture, saved with the bundled tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.loading import BUNDLED_MODEL

    tok = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    AutoModelForCausalLM.from_config(_config(request.param, tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_another_architecture(path, model_dir, monkeypatch):
    monkeypatch.setenv("COURSE_MODEL", str(model_dir))  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    fewer_steps(nb)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
