"""Sharding across data-parallel ranks: what one GPU holds under each ZeRO stage, on top of :func:`estimate`.

ZeRO stage 0 shards nothing (DDP), 1 the optimizer states, 2 the gradients too, 3 the parameters too (FSDP's
``FULL_SHARD``, ``fully_shard``): Rajbhandari et al. 2020, *ZeRO*, §5. Measured per rank in notebook 09.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .estimate import estimate
from .shapes import shape_from_config

ZERO_STAGES = {
    0: ("DDP", "nothing: every rank holds weights, gradients and optimizer states"),
    1: ("ZeRO-1", "optimizer states"),
    2: ("ZeRO-2", "optimizer states + gradients"),
    3: ("ZeRO-3 / FSDP", "optimizer states + gradients + parameters"),
}
GATHERED_LAYERS = 2  # FSDP2 unshards the layer it computes and prefetches the next one (forward and backward)


def _check_world_stage(world: int, stage: int) -> None:
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world (the number of ranks, one per GPU) must be a positive integer, got {world!r}.")
    if stage not in ZERO_STAGES:
        raise ValueError(f"Unknown ZeRO stage {stage!r}. Use one of {sorted(ZERO_STAGES)} "
                         "(0: DDP, 1: states, 2: + gradients, 3: + parameters, which is FSDP's full sharding).")


def per_rank_static(weights: int, gradients: int, optimizer_states: int, world: int, stage: int) -> dict[str, float]:
    """What one of ``world`` ranks holds of the three static parts under ZeRO ``stage``.

    Stage 1 divides the optimizer states by ``world``, stage 2 the gradients too, stage 3 the weights too.
    (An even split: FSDP pads a tensor whose first dimension does not divide evenly, which a measurement
    shows as a few bytes more.)
    """
    _check_world_stage(world, stage)
    return {"weights": weights / world if stage >= 3 else weights,
            "gradients": gradients / world if stage >= 2 else gradients,
            "optimizer states": optimizer_states / world if stage >= 1 else optimizer_states}


@dataclass(frozen=True)
class ShardedEstimate:
    """Predicted memory of one training step on each of ``world`` GPUs (bytes per GPU unless named otherwise).

    ``weights``, ``gradients``, ``optimizer_states``: this GPU's part of the static memory (on the CPU
    when ``offload``); ``gathered``: the parameters FSDP all-gathers at once (stage 3 on 2+ ranks only:
    :data:`GATHERED_LAYERS` decoder layers, and the unsharded root: embeddings, final norm, output head);
    ``activations`` and ``temporaries``: as the one-GPU estimate has them at its peak (every rank runs its
    own micro-batch: data parallelism does not divide them); ``overhead``: the one-GPU estimate's stated
    allowance. ``cpu_ram``: what the offloaded shards of all ``world`` ranks take in the host's RAM.
    """

    world: int
    stage: int
    offload: bool
    weights: float
    gradients: float
    optimizer_states: float
    gathered: float
    activations: float
    temporaries: float
    overhead: float
    cpu_ram: float

    @property
    def per_gpu(self) -> float:
        """Bytes on each GPU at the step's peak: what is not offloaded, plus gathered, activations, temporaries, overhead."""
        static = 0 if self.offload else self.weights + self.gradients + self.optimizer_states
        return static + self.gathered + self.activations + self.temporaries + self.overhead


def sharded_estimate(config: Any, recipe: Any, world: int, stage: int = 3, offload: bool = False) -> ShardedEstimate:
    """Per-GPU memory of ``recipe`` on ``world`` GPUs under ZeRO ``stage``, from :func:`utils.estimate`.

    - The static parts at the one-GPU peak (its weights, optimizer states and the gradients held then) are
      divided as :func:`per_rank_static` says.
    - Stage 3 all-gathers parameters layer by layer: ``GATHERED_LAYERS`` layers' weights (one layer's weights
      is the estimate's weights minus those of the same model with one layer fewer) plus the weights outside
      the layers (the root module, which FSDP2 keeps unsharded from forward to backward).
    - ``offload`` (FSDP's ``offload_params``, stage 3 only) keeps the sharded weights, gradients and states in
      CPU RAM, where the optimizer step runs; the GPU holds what is gathered, the activations and temporaries.
    """
    _check_world_stage(world, stage)
    if offload and stage != 3:
        raise ValueError("Parameter offload is FSDP's (stage 3): give stage=3, or offload=False.")
    shape = shape_from_config(config)
    one = estimate(shape, recipe)
    parts = one.peak_parts
    static = per_rank_static(parts["weights"], parts["gradients"], parts["optimizer states"], world, stage)
    gathered = 0
    if stage == 3 and world > 1:  # one rank holds everything: nothing to gather
        if shape.layers < 2:
            raise ValueError("Stage 3 on several ranks needs a model of 2 layers or more to tell one layer's "
                             f"weights from the rest; this one has {shape.layers}.")
        layer = one.weights - estimate(replace(shape, layers=shape.layers - 1), recipe).weights
        outside = one.weights - shape.layers * layer
        gathered = min(GATHERED_LAYERS, shape.layers) * layer + outside
    cpu_ram = world * sum(static.values()) if offload else 0
    return ShardedEstimate(world, stage, offload, static["weights"], static["gradients"], static["optimizer states"],
                           gathered, parts["activations"], parts["temporaries"], one.overhead, cpu_ram)
