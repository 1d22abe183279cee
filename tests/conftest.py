"""Shared fixtures: a tiny random Llama saved to a temporary folder, so unit tests need no download."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and the bundled tokenizer, saved as safetensors."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from utils.loading import BUNDLED_MODEL

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path



ARCHITECTURE_TEST = "test_any_architecture.py"


def code_cells(notebook: Path) -> int:
    """How many code cells ``notebook`` has: the proxy for how long it runs that the test order uses."""
    import nbformat

    return sum(cell.cell_type == "code" for cell in nbformat.read(notebook, as_version=4).cells)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Order and group the tests for two workers (course.sh: ``-n 2 --dist loadgroup --no-loadscope-reorder``).

    The architecture test's notebooks come first, one unit of work each, the notebooks with the most code cells
    (the longest to run) first; then every other test module in file order, each kept on one worker so that its
    module fixtures are built once; the many short tests at the end fill in while the other worker finishes.
    A notebook's nbval cells (``pytest --nbval``) stay together and in order. Without pytest-xdist only the
    order changes.
    """
    def notebook_cells(item) -> int:
        return code_cells(item.callspec.params["path"]) if item.path.name == ARCHITECTURE_TEST else 0

    architecture = sorted((item for item in items if item.path.name == ARCHITECTURE_TEST),
                          key=notebook_cells, reverse=True)
    items[:] = architecture + [item for item in items if item.path.name != ARCHITECTURE_TEST]
    for item in items:
        if item.path.name != ARCHITECTURE_TEST:
            item.add_marker(pytest.mark.xdist_group(str(item.path)))
