"""Will it fit? Predict the peak memory of one training step of a Llama-style decoder, before loading it.

The estimate is built from the same four kinds of memory that :func:`utils.measure_training_step`
measures, plus the transient buffers that set the peak, so that prediction and measurement can be
compared number for number:

- **weights**: every parameter's ``numel * element size``; a 4-bit weight costs its packed bytes plus
  its quantization constants (see :func:`nf4_bytes`).
- **gradients**: one gradient per trainable parameter, in the parameter's dtype.
- **optimizer states**: AdamW's two moments per trainable parameter (see :func:`optimizer_state_bytes`).
- **activations**: the tensors autograd saves for backward. They are not approximated by a rule of
  thumb: :func:`activation_ledger` walks the forward pass of ``transformers``' ``LlamaForCausalLM``
  (and PEFT's LoRA layers, bitsandbytes' ``Linear4bit``) op by op and applies autograd's rule for
  each op (which inputs or outputs it saves, and only when a gradient needs them), deduplicating
  tensors that several ops save, as :func:`utils.count_saved_tensors` does.
- **transients** at the peak: the peak is the highest of a few moments of the step
  (:func:`peak_moments`): the start of backward (the loss gradient over the vocabulary), the MLP
  backward of the first and last layer processed (recomputing that layer under checkpointing), the
  end of backward (tied embeddings), the optimizer update (its temporaries depend on the
  implementation). Each moment is the sum of what is provably alive then.
- **overhead**: what tensor statistics do not see (CUDA context, allocator fragmentation). It is a
  *stated assumption*, not a measurement: 0 on the CPU, :data:`CUDA_OVERHEAD_BYTES` on a GPU.

Sources for the formulas (the versions the course pins): transformers 5.24
``models/llama/modeling_llama.py`` (RMSNorm, rotary embedding, attention, MLP),
``integrations/sdpa_attention.py`` (GQA through ``enable_gqa``), ``loss/loss_utils.py`` (the loss
upcasts logits to fp32), ``modeling_layers.py`` (checkpointing per decoder layer); PEFT 0.21
``tuners/lora/layer.py`` and ``tuners/lora/bnb.py`` (adapter input casts, the 4-bit ``clone``);
bitsandbytes 0.50 ``functional.py`` (``quantize_4bit``: 64 weights per block; nested absmax: 256 per
block), ``optim/optimizer.py`` (8-bit states: blocks of 256, fp32 states below 4096 elements),
``backends/cpu/ops.py`` (CPU optimizer temporaries); torch 2.13 ``optim/adam.py`` (for-loop and
foreach AdamW temporaries), ``torch/utils/checkpoint.py`` (non-reentrant checkpoint saves the layer
inputs); Dettmers et al. 2023 §3 (QLoRA: NF4, double quantization); Hu et al. 2021 (LoRA).

The package, one part per file: :mod:`~utils.estimator.shapes` (the config's numbers, the GPU list),
:mod:`~utils.estimator.recipe` (how the model is trained), :mod:`~utils.estimator.static` (weights,
gradients, optimizer states), :mod:`~utils.estimator.activations` (the op-by-op ledger),
:mod:`~utils.estimator.loss` (plain and chunked loss), :mod:`~utils.estimator.peak` (the moments and
the :class:`Estimate`), and :mod:`~utils.estimator.harness` (building a model for a recipe and
measuring it: the only part that imports torch).

Assumptions, stated: unpadded batches (no attention mask, or an all-ones mask, which transformers
drops: SDPA then runs the causal flash kernel and saves q, k, v, output and the log-sum-exp);
dropout 0 (PEFT's default ``lora_dropout=0`` uses ``nn.Identity``); ``use_cache=False`` as the
Trainer sets it; the steady state of training (optimizer states exist before the step).

Validated on the CPU (``tests/test_estimator.py``, notebook 07): weights, gradients, states and saved
activations exactly, the peak within 1% for full fine-tuning, LoRA and QLoRA, with and without
checkpointing, in fp32, bf16 and autocast; the recipe options ``prepare_kbit``, ``chunked_loss``,
``accumulation_steps`` and the bytes ``offload_activations`` moves, within the tolerances
``tests/test_estimator.py`` states. On CUDA the same rules apply with these differences,
which no GPU has checked yet: torch's default AdamW there is the foreach implementation (one
moment's worth of temporaries), fused kernels and bitsandbytes' optimizers have none; PEFT's
``lora.Linear4bit`` skips its input cast under CUDA autocast; the attention kernel (flash or
memory-efficient) is assumed to save what the CPU flash kernel saves; paged optimizer states live in
unified memory that ``max_memory_allocated`` does not count; the chunked loss folds its tiles in a
Triton kernel (no whole-tile temporaries) and keeps only the scored positions; activation offloading
(which moves nothing on the CPU) keeps on the GPU what it must, its stream stash of up to five recent
tensors left out.
"""
from __future__ import annotations
from .activations import MIN_OFFLOAD_BYTES, ActivationLedger, LayerLedger, activation_ledger, offloads
from .harness import build_model, llama_config, make_optimizer, measure_offloaded, measure_recipe, prepare_for_training
from .loss import TOKEN_CHUNK, VOCAB_CHUNK
from .peak import CPU_RNG_STATE_BYTES, CUDA_OVERHEAD_BYTES, Estimate, Moment, estimate, peak_moments
from .recipe import DEVICES, LINEAR_NAMES, METHODS, OPTIMIZERS, PEFT_DEFAULT_TARGETS, PRECISIONS, Recipe
from .shapes import GPUS, LLAMA_LIKE, GiB, ModelShape, common_shapes, load_shape, shape_from_config
from .static import (MIN_8BIT_SIZE, NESTED_BLOCK, NF4_BLOCK, OPTIMIZER_BLOCK, Param, gradient_bytes, nf4_bytes,
                     optimizer_state_bytes, optimizer_temporary_bytes, parameter_inventory, weight_bytes)

__all__ = [
    "ActivationLedger", "CPU_RNG_STATE_BYTES", "CUDA_OVERHEAD_BYTES", "DEVICES", "Estimate", "GPUS", "GiB",
    "LINEAR_NAMES", "LLAMA_LIKE", "LayerLedger", "METHODS", "MIN_8BIT_SIZE", "MIN_OFFLOAD_BYTES", "Moment",
    "ModelShape", "NESTED_BLOCK", "NF4_BLOCK", "OPTIMIZERS", "OPTIMIZER_BLOCK", "PEFT_DEFAULT_TARGETS",
    "PRECISIONS", "Param", "Recipe", "TOKEN_CHUNK", "VOCAB_CHUNK", "activation_ledger", "build_model",
    "common_shapes", "estimate", "gradient_bytes", "llama_config", "load_shape", "make_optimizer",
    "measure_offloaded", "measure_recipe", "nf4_bytes", "offloads", "optimizer_state_bytes",
    "optimizer_temporary_bytes", "parameter_inventory", "peak_moments", "prepare_for_training",
    "shape_from_config", "weight_bytes",
]
