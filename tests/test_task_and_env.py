import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import utils
from utils import task


def test_exact_match_strips_whitespace():
    assert task.exact_match([" 1821-03-03", "1999-01-01 "], ["1821-03-03", " 1999-01-02"]) == 0.5


def test_exact_match_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        task.exact_match(["a", "b"], ["a"])


def test_generate_returns_only_the_new_text(tiny_model_dir):
    model, tok = utils.load_model(tiny_model_dir)
    side = tok.padding_side
    prompts = ["Date: March 3, 1821\nISO:", "In"]
    out = task.generate(model, tok, prompts, max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    # batched left-padded generation gives what one-at-a-time generation gives
    assert out == [task.generate(model, tok, [p], max_new_tokens=4)[0] for p in prompts]
    assert tok.padding_side == side  # restored after left-padded generation


def test_generate_ids_stop_at_the_eos_and_keep_it(tiny_model_dir):
    model, tok = utils.load_model(tiny_model_dir)
    prompts = ["Date: March 3, 1821\nISO:", "In"]
    model.generation_config.eos_token_id = None  # no stop token: every row runs to max_new_tokens
    full = task.generate_ids(model, tok, prompts, max_new_tokens=6)
    assert [len(ids) for ids in full] == [6, 6]
    # make the first token generated for the first prompt the EOS: its row is that token alone
    first = full[0][0]
    model.generation_config.eos_token_id = first
    stopped = task.generate_ids(model, tok, prompts, max_new_tokens=6)
    assert stopped[0] == [first]
    assert stopped[1] == full[1][: full[1].index(first) + 1] if first in full[1] else stopped[1] == full[1]
    assert task.generate(model, tok, prompts[:1], max_new_tokens=6) == [tok.decode([first], skip_special_tokens=True)]


def test_perplexity_is_exp_of_the_mean_loss(tiny_model_dir):
    model, tok = utils.load_model(tiny_model_dir)
    text = "And God said, Let there be light: and there was light. " * 20
    ids = tok(text, return_tensors="pt")["input_ids"][0][: 2 * 16].view(2, 16)
    with torch.no_grad():
        expected = math.exp(model(input_ids=ids, labels=ids).loss.item())
    assert task.perplexity(model, tok, text, block=16, max_blocks=2) == pytest.approx(expected, rel=1e-5)
    # a random model is close to uniform over the vocabulary
    assert 0.5 * len(tok) < expected < 2 * len(tok)


def test_seed_everything_repeats_random_draws():
    utils.seed_everything(3)
    a = torch.randn(4)
    utils.seed_everything(3)
    assert torch.equal(a, torch.randn(4))


def test_environment_check_prints_one_line_per_component():
    lines = []
    ok = utils.check_environment(lines.append)
    assert ok, lines
    names = [line[5:].split()[0] for line in lines]
    for component in ("torch", "transformers", "peft", "trl", "bitsandbytes", "device"):
        assert component in names


def test_memory_breakdown_plot_stacks_the_parts():
    ax = utils.plot_memory_breakdown({"full": {"weights": 2 * utils.MiB, "gradients": utils.MiB},
                                      "lora": {"weights": 2 * utils.MiB, "gradients": 0}})
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.0, 1.0, 2.0, 2.0]
    assert [t.get_text() for t in ax.texts] == ["3.0", "2.0"]


def test_loss_plot_reads_trainer_history():
    history = [{"loss": 2.0, "step": 10}, {"eval_loss": 1.0, "step": 10}, {"loss": 1.5, "step": 20}]
    ax = utils.plot_loss(history)
    x, y = ax.lines[0].get_data()
    assert list(x) == [10, 20] and list(y) == [2.0, 1.5]
