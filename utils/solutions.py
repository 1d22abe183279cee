"""Reference solutions of the notebooks' function exercises, kept out of the notebooks.

A learner who scrolls past an exercise should not read its answer by accident: the check cells pass these to
:func:`utils.check_function` as ``solution``, which runs the same check on them first, so that a check that no
longer holds fails on the maintainer's machine, not on the learner's answer. Open this file when you want
to compare; each function is named after the exercise's function and says where the exercise is.
"""
from __future__ import annotations

import torch


def absmax_int4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Notebook 03, exercise 1: the 4-bit absmax codes of ``x`` (integers from -7 to 7) and the scale."""
    scale = 7 / x.abs().max()
    return torch.round(x * scale), scale


def outlier_columns(X: torch.Tensor, threshold: float) -> list[int]:
    """Notebook 04, exercise 1: the sorted indices of the columns that LLM.int8() keeps in 16 bits."""
    return sorted(set(torch.nonzero(X.abs() >= threshold)[:, 1].tolist()))


def int8_linear_bytes(out_features: int, in_features: int) -> int:
    """Notebook 04, exercise 2: the bytes of a ``Linear8bitLt`` without bias: int8 weights, one fp32 scale a row."""
    return out_features * in_features + 4 * out_features


def dequantize_double(weight) -> torch.Tensor:
    """Notebook 06, exercise 2: a double-quantized ``Linear4bit`` weight dequantized by hand."""
    qs = weight.quant_state
    nested = qs.state2
    second = torch.repeat_interleave(nested.absmax, nested.blocksize)[: qs.absmax.numel()]
    absmax = nested.code[qs.absmax.long()] * second + qs.offset  # the 8-bit absmax codes back to floats
    packed = weight.data.reshape(-1)
    idx = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[: qs.shape.numel()]  # high half first
    return (qs.code[idx.long()].reshape(-1, qs.blocksize) * absmax[:, None]).reshape(qs.shape).to(qs.dtype)


def accumulated_logit_bytes(n: int, length: int, vocab: int, bytes_per_value: int = 4) -> int:
    """Notebook 10, exercise 1: the bytes of the logits the Trainer keeps for ``n`` evaluated examples."""
    return n * length * vocab * bytes_per_value


def merge_by_hand(lora_layer) -> torch.Tensor:
    """Notebook 10, exercise 2: the merged fp32 weight W + scaling * B @ A of a LoRA layer on an NF4 base."""
    import bitsandbytes.functional as bnbF

    base_layer = lora_layer.get_base_layer()
    weight = bnbF.dequantize_4bit(base_layer.weight.data, base_layer.weight.quant_state).float()
    a, b = lora_layer.lora_A["default"].weight.float(), lora_layer.lora_B["default"].weight.float()
    return weight + lora_layer.scaling["default"] * (b @ a)


def to_messages(row: dict) -> list[dict]:
    """Notebook 11, exercise 1: a ShareGPT row (``conversations`` of ``from``/``value``) as chat ``messages``."""
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    return [{"role": role[turn["from"]], "content": turn["value"]} for turn in row["conversations"]]


def pissa_init(W: torch.Tensor, r: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Notebook 12, exercise 2: PiSSA's (A, B, W_res): the top r singular directions of W, divided by the scale."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    root = (S[:r] / scale).sqrt()
    B, A = U[:, :r] * root, root[:, None] * Vh[:r]
    return A, B, W - scale * B @ A
