"""Static memory: weights, gradients, optimizer states, and the optimizer step's temporaries.

All of it follows from the parameter inventory (:func:`parameter_inventory`): which tensors exist, in
which dtype, which train. Sources: bitsandbytes 0.50 ``functional.py`` (``quantize_4bit``),
``optim/optimizer.py`` (8-bit states), ``backends/cpu/ops.py`` (CPU optimizer temporaries); torch 2.13
``optim/adam.py``; Dettmers et al. 2023 §3 (double quantization).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .recipe import Recipe
from .shapes import ModelShape

FP32 = 4  # bytes of one fp32 value
# bitsandbytes constants (the sources above)
NF4_BLOCK = 64  # quantize_4bit: one absmax per 64 weights
NESTED_BLOCK = 256  # double quantization: one fp32 absmax per 256 first-level absmax
NF4_CODE_VALUES = 16  # the NF4 code table: 16 fp32 values stored with every weight
NESTED_CODE_VALUES = 256  # double quantization's 8-bit code table: 256 fp32 values
MIN_8BIT_SIZE = 4096  # 8-bit optimizers keep fp32 states for parameters smaller than this
OPTIMIZER_BLOCK = 256  # 8-bit optimizer states: one fp32 absmax per 256 values
OPTIMIZER_CODE_VALUES = 256  # 8-bit optimizers: one 256-value fp32 quantization map per moment, once
ADAM_STEP_BYTES = 4  # torch AdamW keeps its step count as a 0-d fp32 tensor per parameter
PAGED_MIN_SIZE = 100_000  # paged optimizers page the states of parameters of at least 1e5 elements only
# Temporaries of bitsandbytes' CPU update (backends/cpu/ops.py), in fp32 copies of the parameter:
BNB_CPU_32BIT_TEMPS = 3  # g.float() * scale, state2.sqrt() + eps, the update
BNB_CPU_8BIT_TEMPS = 5  # both states dequantized, the scaled gradient, the square root, denom


@dataclass(frozen=True)
class Param:
    """One parameter tensor of the model under a recipe, in the order ``model.parameters()`` yields it."""

    name: str
    numel: int
    itemsize: int  # bytes per element as stored (0.5 for NF4 is handled by ``quantized``)
    trainable: bool
    quantized: bool = False


def parameter_inventory(shape: ModelShape, recipe: Recipe) -> list[Param]:
    """Every parameter tensor, in ``named_parameters()`` order (PEFT inserts A, B after each base weight)."""
    full = recipe.method == "full"
    w, rest = recipe.weight_itemsize, recipe.rest_itemsize  # linear layers; embedding, norms, head
    out = [Param("embed_tokens", shape.vocab * shape.hidden, rest, full)]
    for layer in range(shape.layers):
        for name, (o, n) in shape.linear_shapes().items():
            out.append(Param(f"{layer}.{name}", o * n, w, full, quantized=recipe.method == "qlora"))
            if name in shape.biases:  # never quantized: kept, and cast by prepare_kbit, like the norms
                out.append(Param(f"{layer}.{name}.bias", o, rest, full))
            if recipe.uses_adapters and name in recipe.lora_targets:
                a = recipe.adapter_itemsize
                out.append(Param(f"{layer}.{name}.lora_A", recipe.lora_r * n, a, True))
                out.append(Param(f"{layer}.{name}.lora_B", o * recipe.lora_r, a, True))
        out += [Param(f"{layer}.input_layernorm", shape.hidden, rest, full),
                Param(f"{layer}.post_attention_layernorm", shape.hidden, rest, full)]
    out.append(Param("norm", shape.hidden, rest, full))
    if not shape.tied_embeddings:
        out.append(Param("lm_head", shape.vocab * shape.hidden, rest, full))
    return out


def nf4_bytes(numel: int, double_quant: bool = True) -> int:
    """Bytes of one weight stored by bitsandbytes ``quantize_4bit`` (blocks of 64), as ``utils.parameter_bytes`` counts them.

    Packed 4-bit values ``ceil(n/2)``; the NF4 code table, 16 fp32 values; per block of 64 one absmax:
    fp32 without double quantization, else uint8, plus per 256 of those one fp32 absmax and the 256-value
    fp32 code of the second quantization (QLoRA §3: 32/64 = 0.5 bits per weight of constants
    -> 8/64 + 32/(64*256) ≈ 0.127 bits). The fp32 ``offset`` scalar of double quantization (4 bytes)
    is not counted by ``utils.parameter_bytes`` and not here.
    """
    blocks = math.ceil(numel / NF4_BLOCK)
    packed, code = math.ceil(numel / 2), NF4_CODE_VALUES * FP32
    if not double_quant:
        return packed + code + FP32 * blocks
    return packed + code + blocks + FP32 * math.ceil(blocks / NESTED_BLOCK) + NESTED_CODE_VALUES * FP32


def weight_bytes(params: list[Param], recipe: Recipe) -> int:
    """Bytes of all weights: ``numel * itemsize``, or :func:`nf4_bytes` for quantized ones."""
    return sum(nf4_bytes(p.numel, recipe.double_quant) if p.quantized else p.numel * p.itemsize for p in params)


def gradient_bytes(params: list[Param]) -> int:
    """One gradient per trainable parameter, in its dtype (autograd's ``AccumulateGrad``)."""
    return sum(p.numel * p.itemsize for p in params if p.trainable)


def _uses_8bit_states(p: Param, optimizer: str) -> bool:
    return optimizer.endswith("8bit") and p.numel >= MIN_8BIT_SIZE


def optimizer_state_bytes(params: list[Param], optimizer: str) -> int:
    """Bytes of the optimizer's state for the trainable parameters.

    - torch AdamW: ``exp_avg`` and ``exp_avg_sq`` in the parameter's dtype, and a 4-byte fp32 ``step``
      tensor per parameter (torch/optim/adam.py).
    - bitsandbytes 32-bit (paged) AdamW: ``state1``, ``state2`` in fp32.
    - bitsandbytes 8-bit (paged) AdamW: ``state1``, ``state2`` in uint8 with one fp32 absmax per 256 values
      each, fp32 states for parameters under 4096 elements, and the two 256-value fp32 quantization
      maps once (bitsandbytes/optim/optimizer.py, ``init_state``).
    """
    trainable = [p for p in params if p.trainable]
    if optimizer in ("adamw", "adamw_fused"):
        return sum(2 * p.numel * p.itemsize + ADAM_STEP_BYTES for p in trainable)
    total = 0
    for p in trainable:
        if _uses_8bit_states(p, optimizer):
            total += 2 * p.numel + 2 * FP32 * math.ceil(p.numel / OPTIMIZER_BLOCK)
        else:
            total += 2 * FP32 * p.numel
    if any(_uses_8bit_states(p, optimizer) for p in trainable):
        total += 2 * OPTIMIZER_CODE_VALUES * FP32
    return total


def pageable_state_bytes(params: list[Param], optimizer: str) -> int:
    """Bytes of the optimizer states that a paged optimizer keeps in CUDA unified memory.

    bitsandbytes pages ``state1`` and ``state2`` only for parameters of at least 1e5 elements
    (``optim/optimizer.py``, ``get_state_buffer``: ``p.numel() < 1e5`` gets ordinary device memory); the
    8-bit absmax and the quantization maps are never paged. So LoRA r=8 on a 4096-wide model pages nothing:
    each of its A and B matrices holds 8 x 4096 = 32,768 elements.
    """
    if not optimizer.startswith("paged"):
        return 0
    per_element = {True: 2, False: 2 * FP32}  # two states, uint8 or fp32
    return sum(per_element[_uses_8bit_states(p, optimizer)] * p.numel
               for p in params if p.trainable and p.numel >= PAGED_MIN_SIZE)


def optimizer_temporary_bytes(params: list[Param], optimizer: str, device: str) -> int:
    """The largest temporary memory the optimizer step allocates on top of weights, gradients and states.

    - torch AdamW, for-loop (CPU default): per parameter ``exp_avg_sq.sqrt()`` and the division that
      makes ``denom`` (2 x the parameter), while the previous parameter's ``denom`` is still referenced:
      ``max_i(2 P_i + P_(i-1))`` (torch/optim/adam.py, ``_single_tensor_adam``).
    - torch AdamW, foreach (CUDA default): ``torch._foreach_sqrt`` of every ``exp_avg_sq`` at once:
      the bytes of all states of one moment (``_multi_tensor_adam``).
    - fused kernels (torch ``fused=True``; bitsandbytes on CUDA): none.
    - bitsandbytes on the CPU (backends/cpu/ops.py): 32-bit update: ``g.float()*scale``,
      ``state2.sqrt()+eps`` and the update: 3 fp32 copies of the largest parameter; 8-bit update: both
      states dequantized to fp32, the scaled gradient, the square root and ``denom``: 5 fp32 copies;
      both: one more, ``p.data.float()``, when the parameter is not fp32 (found by the held-out check
      of notebook 07, full bf16 fine-tuning with 8-bit AdamW: -5% to -8% before).
    """
    trainable = [p for p in params if p.trainable]
    if not trainable or optimizer == "adamw_fused" or (optimizer != "adamw" and device == "cuda"):
        return 0
    if optimizer == "adamw":
        sizes = [p.numel * p.itemsize for p in trainable]
        if device == "cuda":
            return sum(sizes)
        return max(2 * s + (sizes[k - 1] if k else 0) for k, s in enumerate(sizes))
    return max((BNB_CPU_8BIT_TEMPS if _uses_8bit_states(p, optimizer) else BNB_CPU_32BIT_TEMPS)
               * FP32 * p.numel + (FP32 * p.numel if p.itemsize != FP32 else 0)  # p.data.float(): a copy unless fp32
               for p in trainable)

