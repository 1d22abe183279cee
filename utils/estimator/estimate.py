"""The estimate: :func:`estimate` puts weights, gradients, optimizer states, activations and the peak
moments together into an :class:`Estimate`, comparable number for number with :class:`utils.StepMemory`."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .activations import activation_ledger
from .gpus import GiB
from .parameter_memory import (gradient_bytes, optimizer_state_bytes, pageable_state_bytes, parameter_inventory,
                               weight_bytes)
from .peak import Moment, peak_moments
from .recipe import Recipe
from .shapes import ModelShape, shape_from_config

CUDA_OVERHEAD_BYTES = 1 * GiB  # stated assumption (not measured here): CUDA context, kernels, fragmentation


# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """Predicted memory of one training step (bytes).

    ``weights``, ``gradients``, ``optimizer_states``, ``activations`` are comparable one to one with
    :class:`utils.StepMemory`; ``peak`` with ``StepMemory.peak`` (on CUDA: ``max_memory_allocated``).
    ``peak_moment`` names the moment that sets it and ``peak_parts`` splits it by kind.
    ``overhead`` is the stated allowance for what tensor statistics miss; ``total = peak + overhead``
    is what to compare with a GPU's memory. ``offloaded`` (with ``offload_activations``) is the bytes of
    saved activations copied to CPU RAM in forward (held there, not on the device, until backward).
    ``pageable`` is the bytes of optimizer states a paged optimizer keeps in CUDA unified memory, which the
    driver moves to CPU RAM when the GPU runs short (and which ``torch.cuda.max_memory_allocated`` does not
    count): only the states of parameters of at least 1e5 elements (:func:`pageable_state_bytes`).
    """

    shape: ModelShape
    recipe: Recipe
    parameters: int
    trainable_parameters: int
    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    moments: dict[str, Moment]
    overhead: int
    offloaded: int = 0
    pageable: int = 0

    @property
    def peak_moment(self) -> str:
        """The moment of the step that holds the most (ties: the earliest)."""
        return max(self.moments, key=lambda m: sum(self.moments[m].values()))

    @property
    def peak_parts(self) -> dict[str, int]:
        """The peak split into weights, optimizer states, gradients, activations and temporaries."""
        return dict(self.moments[self.peak_moment])

    @property
    def peak(self) -> int:
        return sum(self.peak_parts.values())

    @property
    def total(self) -> int:
        return self.peak + self.overhead

    def breakdown(self) -> dict[str, int]:
        """The four kinds of :meth:`utils.StepMemory.breakdown`, for :func:`utils.plot_memory_breakdown`."""
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer states": self.optimizer_states, "activations": self.activations}

    def fits(self, capacity: int) -> bool:
        """True when ``total`` (peak plus stated overhead) is at most ``capacity`` bytes."""
        return self.total <= capacity

    def verdict(self, capacity: int) -> str:
        """``"fits"``, ``"fits if paged states spill to CPU"`` or ``"does not fit"`` in ``capacity`` bytes."""
        if self.total <= capacity:
            return "fits"
        if self.total - self.pageable <= capacity:
            return "fits if paged states spill to CPU"
        return "does not fit"


def estimate(config: Any, recipe: Recipe | None = None, overhead: int | None = None, **recipe_fields: Any) -> Estimate:
    """Predict the memory of one training step of ``config`` (a transformers config, a mapping or a
    :class:`ModelShape`) trained with ``recipe`` (or ``Recipe(**recipe_fields)``).

    ``overhead`` defaults to 0 on the CPU and :data:`CUDA_OVERHEAD_BYTES` on CUDA (an assumption).
    """
    shape = shape_from_config(config)
    if recipe is None:
        recipe = Recipe(**recipe_fields)
    elif recipe_fields:
        recipe = replace(recipe, **recipe_fields)
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a utils.estimator.Recipe, got {type(recipe).__name__}.")
    if overhead is None:
        overhead = CUDA_OVERHEAD_BYTES if recipe.device == "cuda" else 0
    params = parameter_inventory(shape, recipe)
    ledger = activation_ledger(shape, recipe)
    return Estimate(
        shape=shape, recipe=recipe,
        parameters=shape.parameters(),
        trainable_parameters=sum(p.numel for p in params if p.trainable),
        weights=weight_bytes(params, recipe),
        gradients=gradient_bytes(params),
        optimizer_states=optimizer_state_bytes(params, recipe.optimizer),
        activations=ledger.total,
        moments=peak_moments(shape, recipe, params, ledger), overhead=overhead,
        offloaded=ledger.offloaded() if recipe.offload_activations else 0,
        pageable=pageable_state_bytes(params, recipe.optimizer),
    )

