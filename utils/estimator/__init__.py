"""Will it fit? Predict the peak memory of one training step of a Llama-style decoder from its config and a recipe.

``estimate(config, recipe)`` returns an :class:`Estimate` (weights, gradients, optimizer states, activations,
the peak moment), comparable number for number with :func:`utils.measure_training_step`; ``sharded_estimate``
does the same per GPU under ZeRO/FSDP. Notebook 07 writes the plain case from scratch and checks it against
this package; the design, the sources and the stated assumptions are in ``utils/estimator/README.md``.
"""
from __future__ import annotations

from .activations import MIN_OFFLOAD_BYTES, ActivationLedger, LayerLedger, activation_ledger
from .estimate import CUDA_OVERHEAD_BYTES, Estimate, estimate
from .gpus import GPUS, GiB
from .harness import build_model, llama_config, make_optimizer, measure_offloaded, measure_recipe, prepare_for_training
from .loss import TOKEN_CHUNK, VOCAB_CHUNK
from .parameter_memory import nf4_bytes
from .peak import CPU_RNG_STATE_BYTES
from .recipe import LINEAR_NAMES, PEFT_DEFAULT_TARGETS, Recipe
from .shapes import LLAMA_LIKE, ModelShape, common_shapes, load_shape, shape_from_config
from .sharded import GATHERED_LAYERS, ZERO_STAGES, ShardedEstimate, per_rank_static, sharded_estimate

__all__ = [
    "ActivationLedger", "CPU_RNG_STATE_BYTES", "CUDA_OVERHEAD_BYTES", "Estimate", "GATHERED_LAYERS", "GPUS", "GiB",
    "LINEAR_NAMES", "LLAMA_LIKE", "LayerLedger", "MIN_OFFLOAD_BYTES", "ModelShape", "PEFT_DEFAULT_TARGETS", "Recipe",
    "ShardedEstimate", "TOKEN_CHUNK", "VOCAB_CHUNK", "ZERO_STAGES", "activation_ledger", "build_model", "common_shapes",
    "estimate", "llama_config", "load_shape", "make_optimizer", "measure_offloaded", "measure_recipe", "nf4_bytes",
    "per_rank_static", "prepare_for_training", "shape_from_config", "sharded_estimate",
]
