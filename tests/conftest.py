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
SHARED_SCOPES = ("class", "module", "package")  # fixtures built once for several tests (session: once per worker)


def code_cells(notebook: Path) -> int:
    """How many code cells ``notebook`` has: the proxy for how long it runs that the test order uses."""
    import nbformat

    return sum(cell.cell_type == "code" for cell in nbformat.read(notebook, as_version=4).cells)


def xdist_group(item) -> str | None:
    """The unit of work that ``item`` belongs to on a pytest-xdist worker, or None for a unit of its own.

    A notebook's nbval cells run in one kernel, in order: one unit. Tests that share a fixture built once per
    module (or class) stay together, so that it is built once: one unit per module and set of such fixtures.
    The architecture test is the exception: its model (a module fixture) takes a second to build on each
    worker, its notebooks minutes to run, so they are spread one by one.
    """
    if item.path.suffix == ".ipynb":
        return str(item.path)
    if item.path.name == ARCHITECTURE_TEST:
        return None
    info = getattr(item, "_fixtureinfo", None)  # pytest's record of the item's fixtures (no public accessor)
    if info is None:
        return str(item.path)
    shared = sorted(name for name, defs in info.name2fixturedefs.items() if defs and defs[-1].scope in SHARED_SCOPES)
    return f"{item.path}::{'+'.join(shared)}" if shared else None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Order and group the tests for two workers (course.sh: ``-n 2 --dist loadgroup --no-loadscope-reorder``).

    The architecture test's notebooks come first, the notebooks with the most code cells (the longest to run)
    first; then the other tests in file order, grouped as :func:`xdist_group` says; the many short ones at the
    end fill in while the other worker finishes. Without pytest-xdist only the order changes.
    """
    def notebook_cells(item) -> int:  # 0 for the module's tests that run no notebook
        notebook = getattr(item, "callspec", None) and item.callspec.params.get("path")
        return code_cells(notebook) if notebook else 0

    architecture = sorted((item for item in items if item.path.name == ARCHITECTURE_TEST),
                          key=notebook_cells, reverse=True)
    items[:] = architecture + [item for item in items if item.path.name != ARCHITECTURE_TEST]
    for item in items:
        if (group := xdist_group(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(group))
