"""The peak of a step: the largest of a few moments, each the sum of what is provably alive then.

:func:`peak_moments` lists the moments and what each holds, by kind; :func:`utils.estimator.estimate`
takes the largest.
"""
from __future__ import annotations

from . import loss as L
from .activations import ActivationLedger, activation_ledger
from .recipe import Recipe
from .shapes import ModelShape
from .parameter_memory import (Param, gradient_bytes, optimizer_state_bytes, optimizer_temporary_bytes, parameter_inventory,
                     weight_bytes)

# torch.get_rng_state().numel(): the CPU Mersenne Twister state that torch.utils.checkpoint stashes per
# checkpointed layer (preserve_rng_state=True); on CUDA that stash lives in host memory.
CPU_RNG_STATE_BYTES = 5056
POSITION_ID_BYTES = 8  # int64 position ids, one per position, kept for the recomputation
MUL_BACKWARD_BUFFERS = 3  # the MLP product's backward: its incoming gradient and the two it makes (silu, up)
# A tied, trainable embedding's backward (measured on the CPU): its dense gradient and that gradient's sum with
# the output head's, each vocabulary x hidden in the parameter's dtype.
EMBEDDING_BACKWARD_BUFFERS = 2


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
        for index in sorted({shape.layers - 1, 0}, reverse=True):
            layer = ledger.layers[index]
            if recipe.checkpointing:
                below = sum(ledger.layers[j].input.nbytes for j in range(index))
                here = layer.input.nbytes + layer.saved.bytes - (layer.input.nbytes if layer.input in layer.saved else 0)
            else:
                below = sum(ledger.layers[j].saved.bytes for j in range(index))
                here = layer.saved.bytes
            fresh = _down_gradient_bytes(params, index)  # down_proj's new gradients, just computed
            grads = G if later else other_grads + sum(layer_grads[index + 1:]) + fresh
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
            out[f"MLP backward, layer {index + 1} of {shape.layers}{tag}"] = _moment(W, S, grads, acts, transient)
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
