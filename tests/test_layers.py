"""utils.layers finds the decoder blocks and the linear layers of any standard decoder, from the module tree."""
import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM, LlamaConfig,
                          LlamaForCausalLM, OPTConfig, OPTForCausalLM)
from transformers.pytorch_utils import Conv1D

from utils.layers import decoder_layers, linear_layers, linear_shape, weight_matrix

V, D, N = 64, 32, 3
# architecture -> (model, linear layers per block)
BUILDERS = {
    "llama": (lambda: LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=N,
                                                   num_attention_heads=4, num_key_value_heads=2)), 7),
    "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=D, n_layer=N, n_head=4, n_positions=64)), 4),
    "gpt-neo": (lambda: GPTNeoForCausalLM(GPTNeoConfig(vocab_size=V, hidden_size=D, num_layers=N, num_heads=4,
                                                       attention_types=[[["global", "local"], 1], [["global"], 1]],
                                                       max_position_embeddings=64)), 6),
    "opt": (lambda: OPTForCausalLM(OPTConfig(vocab_size=V, hidden_size=D, num_hidden_layers=N, num_attention_heads=4,
                                             ffn_dim=64, word_embed_proj_dim=D, max_position_embeddings=64)), 6),
}


@pytest.fixture(params=list(BUILDERS), scope="module")
def arch(request):
    torch.manual_seed(0)
    build, per_block = BUILDERS[request.param]
    return request.param, build().eval(), per_block


def test_decoder_layers_are_the_blocks_in_order(arch):
    name, model, _ = arch
    blocks = decoder_layers(model)
    assert len(blocks) == N, name
    assert len({type(b) for b in blocks}) == 1
    names = {id(m): n for n, m in model.named_modules()}
    order = [int(names[id(b)].rsplit(".", 1)[-1]) for b in blocks]
    assert order == list(range(N))


def test_linear_layers_are_every_projection_but_the_output_layer(arch):
    name, model, per_block = arch
    found = linear_layers(model)
    assert len(found) == N * per_block, (name, sorted(found))
    head = model.get_output_embeddings()
    assert all(m is not head for m in found.values())
    assert len(linear_layers(model, output_layer=True)) == len(found) + 1
    assert any(isinstance(m, Conv1D) for m in found.values()) == (name == "gpt2")


def test_weight_matrix_is_out_by_in_whatever_the_storage(arch):
    _, model, _ = arch
    for layer in linear_layers(model).values():
        out_f, in_f = linear_shape(layer)
        w = weight_matrix(layer)
        assert tuple(w.shape) == (out_f, in_f)
        x = torch.randn(2, in_f)
        bias = layer.bias if layer.bias is not None else 0
        torch.testing.assert_close(layer(x), x @ w.T + bias)


def test_a_model_without_decoder_blocks_gets_a_clear_error():
    with pytest.raises(ValueError, match="GradientCheckpointingLayer"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="not a linear layer"):
        linear_shape(torch.nn.ReLU())
