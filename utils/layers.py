"""The parts of a decoder model that the lessons look at, found from the module tree, for any standard decoder.

Llama keeps its blocks in ``model.layers``, GPT-2 and GPT-Neo in ``transformer.h``, OPT in
``model.decoder.layers``; GPT-2's linear layers are ``Conv1D`` modules that store their weight transposed.
These helpers hide those differences, so that no notebook names an attribute or a module that belongs to
one architecture.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.pytorch_utils import Conv1D

LINEAR_TYPES = (nn.Linear, Conv1D)  # bitsandbytes' Linear8bitLt and Linear4bit subclass nn.Linear


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder blocks, in order.

    transformers builds each block on ``GradientCheckpointingLayer`` (the unit its checkpointing
    recomputes); blocks nested inside another block are not counted again.
    """
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    inner = {id(sub) for b in blocks for sub in b.modules() if sub is not b}
    blocks = [b for b in blocks if id(b) not in inner]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no decoder blocks that transformers builds on GradientCheckpointingLayer; "
            "use a causal LM from transformers (Llama, GPT-2, GPT-Neo, OPT, Mistral, Qwen2, ...)."
        )
    return blocks


def linear_layers(model: nn.Module, output_layer: bool = False) -> dict[str, nn.Module]:
    """``{name: module}`` of the model's linear layers: ``nn.Linear`` (bitsandbytes' quantized ones too) and
    GPT-2's ``Conv1D``. The output layer (``get_output_embeddings()``) is left out unless ``output_layer``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name: m for name, m in model.named_modules()
            if isinstance(m, LINEAR_TYPES) and (output_layer or m is not head)}


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a linear layer, whichever way it stores its weight."""
    if isinstance(layer, Conv1D):
        return layer.nf, layer.weight.shape[0]
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features
    raise TypeError(f"not a linear layer: {type(layer).__name__}")


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as an ``(out_features, in_features)`` matrix W, so that the layer computes x W^T (+ bias).

    For GPT-2's ``Conv1D``, which stores W^T, this is a transposed view of the same storage.
    """
    if isinstance(layer, Conv1D):
        return layer.weight.T
    if isinstance(layer, nn.Linear):
        return layer.weight
    raise TypeError(f"not a linear layer: {type(layer).__name__}")
