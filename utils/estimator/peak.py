"""The peak of a step: the largest of a few moments, each the sum of what is provably alive then.

:func:`peak_moments` lists the moments; :func:`estimate` puts the parts together into an
:class:`Estimate`, comparable number for number with :class:`utils.StepMemory`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import loss as L
from .activations import ActivationLedger, activation_ledger
from .recipe import Recipe
from .shapes import GiB, ModelShape, shape_from_config
from .static import (Param, gradient_bytes, optimizer_state_bytes, optimizer_temporary_bytes, parameter_inventory,
                     weight_bytes)

# torch.get_rng_state().numel(): the CPU Mersenne Twister state that torch.utils.checkpoint stashes per
# checkpointed layer (preserve_rng_state=True); on CUDA that stash lives in host memory.
CPU_RNG_STATE_BYTES = 5056
POSITION_ID_BYTES = 8  # int64 position ids, one per position, kept for the recomputation
MUL_BACKWARD_BUFFERS = 3  # the MLP product's backward: its incoming gradient and the two it makes (silu, up)
# A tied, trainable embedding's backward (measured on the CPU): its dense gradient and that gradient's sum with
# the output head's, each vocabulary x hidden in the parameter's dtype.
EMBEDDING_BACKWARD_BUFFERS = 2
CUDA_OVERHEAD_BYTES = 1 * GiB  # stated assumption (not measured here): CUDA context, kernels, fragmentation


def _layer_gradient_bytes(params: list[Param], layers: int) -> tuple[list[int], int]:
    """Gradient bytes per decoder layer, and of everything outside the layers."""
    per_layer = [0] * layers
    other = 0
    for p in params:
        if not p.trainable:
            continue
        head, _, rest = p.name.partition(".")
        if head.isdigit():
            per_layer[int(head)] += p.numel * p.itemsize
        else:
            other += p.numel * p.itemsize
    return per_layer, other


def _down_gradient_bytes(params: list[Param], layer: int) -> int:
    return sum(p.numel * p.itemsize for p in params if p.trainable and p.name.startswith(f"{layer}.down_proj"))


Moment = dict[str, int]  # {"weights", "optimizer states", "gradients", "activations", "temporaries"} -> bytes


def _moment(W: int, S: int, grads: int, acts: int, temporaries: int) -> Moment:
    return {"weights": W, "optimizer states": S, "gradients": grads, "activations": acts, "temporaries": temporaries}


def peak_moments(shape: ModelShape, recipe: Recipe, params: list[Param] | None = None,
                 ledger: ActivationLedger | None = None) -> dict[str, Moment]:
    """What is held at each candidate peak moment of a steady-state training step, by kind.

    Every moment holds the weights and the optimizer states (they exist from the first step on).

    - ``"loss backward"``: all saved activations, plus the loss's temporaries: with the plain loss the
      fp32 gradients of the log-softmax output and of the logits (``nll_loss_backward``,
      ``_log_softmax_backward_data``): ``2 * tokens * vocab * 4``; with the chunked loss
      :func:`utils.estimator.loss.chunked_backward_bytes`. The chunked loss adds ``"loss forward"``
      (:func:`utils.estimator.loss.chunked_forward_bytes`), at the end of the forward pass.
    - ``"MLP backward, layer l of L"`` (the top layer, processed first, and the bottom one, processed
      last): the gradients produced so far; the activations of the layers below (their checkpointed
      inputs, with checkpointing) and of this layer (recomputed, with checkpointing) except what only
      ``down_proj`` saved; as temporaries the incoming residual gradient and the larger of two
      instants: ``down_proj``'s backward (the input gradient of its LoRA branch, which runs first, or
      else what the base layer saved; the base's input gradient; for QLoRA the whole weight,
      dequantized by bitsandbytes for the input gradient) and ``mul``'s backward (the product's
      gradient and the two it makes, for the silu and up outputs). Held bytes change linearly from
      layer to layer, so the two ends bound the others.
    - ``"embedding backward"`` (tied, trainable embeddings): all gradients plus two vocabulary x hidden
      buffers (measured on the CPU: the embedding's gradient and its sum with the output head's).
    - ``"optimizer step"``: all gradients plus :func:`optimizer_temporary_bytes`.

    With ``accumulation_steps > 1`` the backward moments come twice: for the first micro-batch as
    above, and for the later ones (``"..., later micro-batch"``), where every gradient is already
    resident and each new one is a temporary until it is added in place. With
    ``offload_activations`` on CUDA the activations of a moment are those that stay on the GPU plus
    those of the part being differentiated, brought back.
    """
    params = params if params is not None else parameter_inventory(shape, recipe)
    ledger = ledger or activation_ledger(shape, recipe)
    W, S, G = weight_bytes(params, recipe), optimizer_state_bytes(params, recipe.optimizer), gradient_bytes(params)
    # Checkpointing keeps, besides the saved layer inputs, what the recomputation needs: the rotary
    # cos/sin and position ids (int64, one per position) passed as keyword arguments, and per layer the
    # CPU RNG state that torch.utils.checkpoint stashes.
    kept = 0
    if recipe.checkpointing:
        rng = CPU_RNG_STATE_BYTES if recipe.device == "cpu" else 0
        kept = ledger.rope_bytes + POSITION_ID_BYTES * recipe.seq_len + shape.layers * rng
    offloading = recipe.offload_activations and recipe.device == "cuda"
    resident = ledger.total - ledger.offloaded() if offloading else ledger.total  # saved bytes left on the device
    head_back = ledger.head.bytes if offloading else 0  # the loss's own saved tensors, brought back for it
    layer_grads, other_grads = _layer_gradient_bytes(params, shape.layers)
    ids = sum(t.nbytes for what, t in ledger.shared.tensors.values() if what.startswith("embedding"))
    rope = kept if recipe.checkpointing else sum(
        t.nbytes for what, t in ledger.shared.tensors.values() if what.startswith("rotary"))
    if not shape.tied_embeddings:  # an untied embedding's gradient comes last, after every layer
        other_grads -= sum(p.numel * p.itemsize for p in params if p.trainable and p.name == "embed_tokens")
    n = recipe.batch_size * recipe.seq_len
    w_deq = shape.hidden * shape.intermediate * (4 if recipe.precision == "fp32" else 2)
    loss = _loss_temporaries(shape, recipe, params, ledger)

    def backward_moments(later: bool) -> dict[str, Moment]:
        """The moments of one micro-batch's forward end and backward; ``later``: gradients already resident."""
        tag = ", later micro-batch" if later else ""
        out = {f"{name}{tag}": _moment(W, S, G if later else 0, resident + head_back + kept, temps)
               for name, temps in loss.items()}
        for l in sorted({shape.layers - 1, 0}, reverse=True):
            layer = ledger.layers[l]
            if recipe.checkpointing:
                below = sum(ledger.layers[j].input.nbytes for j in range(l))
                here = layer.input.nbytes + layer.saved.bytes - (layer.input.nbytes if layer.input in layer.saved else 0)
            else:
                below = sum(ledger.layers[j].saved.bytes for j in range(l))
                here = layer.saved.bytes
            fresh = _down_gradient_bytes(params, l)  # down_proj's new gradients, just computed
            grads = G if later else other_grads + sum(layer_grads[l + 1:]) + fresh
            mlp = n * shape.intermediate * layer.mlp_itemsize
            # down_proj's backward: its LoRA branch runs first (its saved input freed, its input gradient
            # kept), else what the base saved is still held; then the base's input gradient, from the
            # weight dequantized whole if it is 4-bit. mul's backward: the product's gradient and the
            # two it makes. Both on top of the incoming residual gradient.
            lora_down = recipe.uses_adapters and "down_proj" in recipe.lora_targets
            down = (mlp if lora_down else layer.down_only) + (w_deq if recipe.method == "qlora" else 0) + mlp
            transient = layer.output.nbytes + max(down, MUL_BACKWARD_BUFFERS * mlp) + (fresh if later else 0)
            if offloading:  # the layers below stay on the host; this one is back
                acts = resident + rope + here - layer.down_only
            else:
                acts = ids + rope + below + here - layer.down_only
            out[f"MLP backward, layer {l + 1} of {shape.layers}{tag}"] = _moment(W, S, grads, acts, transient)
        return out

    moments = backward_moments(later=False)
    if recipe.accumulation_steps > 1:
        moments.update(backward_moments(later=True))
    if recipe.method == "full" and shape.tied_embeddings:
        moments["embedding backward"] = _moment(
            W, S, G, 0, EMBEDDING_BACKWARD_BUFFERS * shape.vocab * shape.hidden * params[0].itemsize)
    moments["optimizer step"] = _moment(W, S, G, 0, optimizer_temporary_bytes(params, recipe.optimizer, recipe.device))
    return moments


def _loss_temporaries(shape: ModelShape, recipe: Recipe, params: list[Param],
                      ledger: ActivationLedger) -> dict[str, int]:
    """The loss's moments and their temporaries: ``{"loss backward": ...}``, and ``"loss forward"`` when chunked."""
    if not recipe.chunked_loss:
        return {"loss backward": L.plain_backward_bytes(ledger.logits_numel)}
    hidden = ledger.final_hidden
    assert hidden is not None
    head = next(p for p in params if p.name == ("embed_tokens" if shape.tied_embeddings else "lm_head"))
    compute = 2 if recipe.precision == "mixed" else hidden.itemsize  # the autocast dtype, else the hidden states'
    args = dict(tokens=L.scored_tokens(recipe.batch_size, recipe.seq_len), hidden=shape.hidden, vocab=shape.vocab,
                compute=compute, hidden_itemsize=hidden.itemsize, weight_itemsize=head.itemsize,
                triton=recipe.device == "cuda")
    return {"loss forward": L.chunked_forward_bytes(**args),
            "loss backward": L.chunked_backward_bytes(**args, head_trains=head.trainable)}


# --------------------------------------------------------------------------------------------------
# The estimate
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

    @property
    def pageable(self) -> int:
        """Bytes of paged optimizer states: CUDA unified memory, which the driver moves to CPU RAM when
        the GPU runs short (and which ``torch.cuda.max_memory_allocated`` does not count)."""
        return self.optimizer_states if self.recipe.optimizer.startswith("paged") else 0

    def breakdown(self) -> dict[str, int]:
        """The four kinds of :meth:`utils.StepMemory.breakdown`, for :func:`utils.plot_memory_breakdown`."""
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer states": self.optimizer_states, "activations": self.activations}

    def fits(self, capacity: int) -> bool:
        """True when ``total`` (peak plus stated overhead) is at most ``capacity`` bytes."""
        return self.total <= capacity

    def fit(self, capacity: int) -> str:
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
    )

