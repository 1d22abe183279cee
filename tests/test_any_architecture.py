"""Every notebook runs top to bottom on another architecture than the bundled Llama.

A tiny random-weight GPT-Neo (the architecture of ``EleutherAI/gpt-neo-125m``, which the README suggests on
Colab) is built from its config with the bundled tokenizer, and each notebook is executed with
``COURSE_MODEL`` pointing at it. Outputs are not compared (the numbers are another model's); every cell must
run and every structural ``assert`` must hold, so a cell written for one architecture fails here.
"""
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def gpt_neo_dir(tmp_path_factory) -> Path:
    """A 4-block GPT-Neo (global and local attention, biases, hidden 256), random weights, bundled tokenizer."""
    from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

    from utils.loading import BUNDLED_MODEL

    tok = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=len(tok), hidden_size=256, num_layers=4, num_heads=4, window_size=64,
                          attention_types=[[["global", "local"], 2]], max_position_embeddings=256,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("gpt-neo")
    GPTNeoForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_gpt_neo(path, gpt_neo_dir, monkeypatch):
    monkeypatch.setenv("COURSE_MODEL", str(gpt_neo_dir))  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
