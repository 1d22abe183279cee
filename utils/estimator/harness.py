"""Checking the estimate: build a model for a recipe with random weights and measure one training step.

Needs torch, transformers, PEFT (and bitsandbytes for QLoRA or 8-bit optimizers); the rest of
:mod:`utils.estimator` imports none of them.
"""
from __future__ import annotations

from typing import Any

from .recipe import Recipe
from .shapes import ModelShape


def llama_config(shape: ModelShape, **overrides: Any):
    """A ``transformers.LlamaConfig`` with the numbers of ``shape`` (for models built with random weights)."""
    from transformers import LlamaConfig

    kwargs = dict(num_hidden_layers=shape.layers, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                  num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                  tie_word_embeddings=shape.tied_embeddings, head_dim=shape.head_dim, max_position_embeddings=4096,
                  use_cache=False, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _half(device: str):
    """The 16-bit dtype of ``device``: bfloat16 on the CPU, ``utils.compute_dtype`` on CUDA (fp16 on a T4)."""
    import torch

    from ..device import compute_dtype

    return torch.bfloat16 if torch.device(device).type == "cpu" else compute_dtype(torch.device(device))


def build_model(shape: ModelShape, recipe: Recipe, seed: int = 0, device: str | None = None, config: Any = None):
    """A ``LlamaForCausalLM`` with random weights, prepared as ``recipe`` trains it.

    ``config`` (a transformers config of a type in ``shapes.LLAMA_LIKE``) builds that model instead of a Llama
    with the numbers of ``shape``: how the tests check that every accepted type is counted right.

    - ``bf16``/``mixed``: the model (LoRA, QLoRA: its base) in 16-bit (bfloat16; fp16 on GPUs without
      bf16); ``fp32``: float32.
    - QLoRA: the random weights are saved to a temporary folder and loaded back with a
      ``BitsAndBytesConfig`` (NF4, ``double_quant``), the way a real checkpoint is loaded.
    - LoRA/QLoRA: ``peft.get_peft_model`` with ``r=lora_r``, ``lora_alpha=2*r``, dropout 0 (PEFT keeps
      the adapters in fp32; ``adapter_dtype="bf16"`` casts them afterwards).
    - Checkpointing: ``activation_checkpointing_enable`` (transformers 5; ``gradient_checkpointing_enable`` is
      its deprecated alias) with ``use_reentrant=False``.
    - ``prepare_kbit``, ``chunked_loss``: see :func:`prepare_for_training`.
    """
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaForCausalLM

    from ..loading import keep_4bit_layers_trainable

    device = device or recipe.device
    dtype = torch.float32 if recipe.weight_itemsize == 4 else _half(device)
    torch.manual_seed(seed)
    model = (LlamaForCausalLM(llama_config(shape)) if config is None else AutoModelForCausalLM.from_config(config))
    model = model.to(dtype)
    if recipe.method == "qlora":
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_use_double_quant=recipe.double_quant, bnb_4bit_compute_dtype=dtype)
            model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=dtype,
                                                         device_map={"": device})
        keep_4bit_layers_trainable(model)  # as utils.load_model does
    else:
        model.to(device)
    return prepare_for_training(model, recipe)


def prepare_for_training(model, recipe: Recipe):
    """Turn on checkpointing and add LoRA adapters as ``recipe`` says; return the model in train mode.

    Works on any ``LlamaForCausalLM``, e.g. the bundled model loaded with ``utils.load_model``.
    ``prepare_kbit``: ``peft.prepare_model_for_kbit_training`` first (without its own checkpointing,
    which is set here). ``chunked_loss``: trl's ``add_fused_lm_head`` on the base model, with the
    outputs ``SFTTrainer`` asks for, before PEFT wraps it (as ``SFTTrainer`` does); the forward must
    then pass ``fused_lm_head=True`` (:func:`measure_recipe` does).
    """
    import torch

    model.config.use_cache = False
    if recipe.prepare_kbit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if recipe.chunked_loss:
        from trl.trainer.utils import add_fused_lm_head

        from .loss import SFT_OUTPUTS

        add_fused_lm_head(model, outputs=SFT_OUTPUTS)
    if recipe.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if recipe.uses_adapters:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=recipe.lora_r, lora_alpha=2 * recipe.lora_r, lora_dropout=0.0,
                                                 target_modules=list(recipe.lora_targets)))
        if recipe.adapter_dtype == "bf16":
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.data = p.data.to(torch.bfloat16)
    model.train()
    return model


def make_optimizer(model, recipe: Recipe):
    """The optimizer ``recipe`` names, over the model's trainable parameters."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer in ("adamw", "adamw_fused"):
        return torch.optim.AdamW(params, lr=1e-4, fused=recipe.optimizer == "adamw_fused" or None)
    import bitsandbytes as bnb

    cls = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw": bnb.optim.PagedAdamW,
           "paged_adamw8bit": bnb.optim.PagedAdamW8bit}[recipe.optimizer]
    return cls(params, lr=1e-4)


def _batches(model, recipe: Recipe, seed: int) -> list[dict]:
    """``accumulation_steps`` batches of random tokens (labels = inputs, no padding), on the model's device."""
    import torch

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    shape = (recipe.accumulation_steps, recipe.batch_size, recipe.seq_len)
    ids = torch.randint(0, model.config.vocab_size, shape, generator=generator).to(device)
    return [{"input_ids": i, "labels": i} for i in ids]


def _forward_for(recipe: Recipe, device):
    """``forward(model, batch)`` as the recipe runs it: autocast for ``mixed``, trl's fused head when chunked."""
    import torch

    extra = {"fused_lm_head": True} if recipe.chunked_loss else {}

    def forward(m, b):
        with torch.autocast(device.type, dtype=_half(str(device)), enabled=recipe.precision == "mixed"):
            return m(**b, **extra)

    return forward


def measure_recipe(model, recipe: Recipe, seed: int = 0, steps: int = 2):
    """Train ``steps`` steps on random tokens and return the last one's ``utils.StepMemory``.

    The first step creates the optimizer states, so that the measured step is a steady-state one, as
    the estimate assumes. ``mixed`` runs the forward pass under ``torch.autocast`` (bfloat16; fp16 on
    GPUs without bf16). With ``accumulation_steps > 1`` each step is that many forward/backward passes
    (the loss divided by their number, as the Trainer does) and one optimizer step, measured whole;
    ``activations`` is then one micro-batch's. ``offload_activations`` changes nothing here (see
    :func:`measure_offloaded`).
    """
    import warnings

    from ..memory import measure_training_step

    device = next(model.parameters()).device
    batches = _batches(model, recipe, seed)
    forward = _forward_for(recipe, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. bitsandbytes: paged optimizers fall back to unpaged on the CPU
        optimizer = make_optimizer(model, recipe)
        # utils.trace_memory keeps the garbage collector out of the measured step.
        return measure_training_step(model, optimizer=optimizer, forward=forward, warmup_steps=steps - 1,
                                     batches=batches)


def measure_offloaded(model, recipe: Recipe, seed: int = 0, min_bytes: int | None = None) -> int:
    """Bytes that trl's activation offloading would copy to the host during one forward pass, counted.

    Runs the forward pass under ``saved_tensors_hooks`` that apply the rules of
    ``trl/models/activation_offloading.py`` (``OffloadActivations.pack_tensor``) to every tensor autograd
    saves: parameters stay, tensors under ``min_offload_size`` (1024 bytes) stay, a storage already
    offloaded is not copied again, and nothing saved inside the output head's forward moves
    (``get_act_offloading_ctx_manager`` turns offloading off there). trl itself offloads only from an
    accelerator (on the CPU it moves nothing), so here the copies are counted, not made.
    """
    import torch

    from .activations import MIN_OFFLOAD_BYTES

    min_bytes = MIN_OFFLOAD_BYTES if min_bytes is None else min_bytes
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    state = {"in_head": False, "bytes": 0}
    head = model.get_output_embeddings()
    hooks = [head.register_forward_pre_hook(lambda *a: state.update(in_head=True)),
             head.register_forward_hook(lambda *a: state.update(in_head=False), always_call=True)]

    def pack(t: torch.Tensor) -> torch.Tensor:
        nbytes = t.numel() * t.element_size()
        key = t.untyped_storage().data_ptr()
        if (not state["in_head"] and not isinstance(t, torch.nn.Parameter) and key not in params
                and key not in seen and nbytes >= min_bytes):
            seen.add(key)
            state["bytes"] += nbytes
        return t

    forward = _forward_for(recipe, next(model.parameters()).device)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = forward(model, _batches(model, recipe, seed)[0])
        del output
    finally:
        for h in hooks:
            h.remove()
    return state["bytes"]
