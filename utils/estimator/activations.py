"""Activations: the tensors autograd saves for backward, walked op by op through the forward pass.

:func:`activation_ledger` follows ``transformers``' ``LlamaForCausalLM.forward`` (and PEFT's LoRA
layers, bitsandbytes' ``Linear4bit``) and applies autograd's rule for each op: which inputs or outputs
it saves, and only when a gradient needs them, deduplicating tensors that several ops save, as
:func:`utils.count_saved_tensors` does. The loss at the end is :mod:`utils.estimator.loss`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import loss as L
from .recipe import Recipe
from .shapes import ModelShape


MIN_OFFLOAD_BYTES = 1024  # trl OffloadActivations(min_offload_size=1024): smaller saved tensors stay put


@dataclass(eq=False)
class TensorSize:
    """A tensor of the forward pass: elements, bytes per element, whether autograd tracks it."""

    numel: int
    itemsize: int
    grad: bool

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass
class SavedTensors:
    """Tensors saved for backward, each counted once (identity, like ``count_saved_tensors``'s storages)."""

    tensors: dict[int, tuple[str, TensorSize]] = field(default_factory=dict)

    def add(self, what: str, *ts: TensorSize | None) -> None:
        for t in ts:
            if t is not None:
                self.tensors.setdefault(id(t), (what, t))

    def __contains__(self, t: TensorSize) -> bool:
        return id(t) in self.tensors

    @property
    def bytes(self) -> int:
        return sum(t.nbytes for _, t in self.tensors.values())

    def by_op(self) -> dict[str, int]:
        """Bytes by the op that saved them first: the ledger a learner can read."""
        out: dict[str, int] = {}
        for what, t in self.tensors.values():
            out[what] = out.get(what, 0) + t.nbytes
        return out


def _cast(x: TensorSize, itemsize: int) -> TensorSize:
    """``x.to(dtype)``: the same tensor when the dtype already matches, else a new one (``ToCopyBackward`` saves nothing)."""
    return x if x.itemsize == itemsize else TensorSize(x.numel, itemsize, x.grad)


@dataclass
class ForwardPass:
    """What the op rules need to know about one forward pass."""

    shape: ModelShape
    recipe: Recipe
    tokens: int
    autocast: bool
    base_itemsize: int  # stored bytes per element of base (or master) weights
    compute_itemsize: int  # bytes per element the linear layers compute in
    rest_itemsize: int  # stored bytes per element of the embedding, norms and head (fp32 after prepare_kbit)
    weight_copies: dict[str, TensorSize] = field(default_factory=dict)  # autocast's cache of 16-bit weight casts

    def autocast_weight(self, key: str, numel: int, itemsize: int, trainable: bool) -> TensorSize | None:
        """The 16-bit copy autocast makes of a weight (cached for trainable fp32 leaves), or None if already 16-bit."""
        if itemsize == 2:
            return None
        if trainable:
            return self.weight_copies.setdefault(key, TensorSize(numel, 2, True))
        return TensorSize(numel, 2, False)


def _rmsnorm(S: SavedTensors, fwd: ForwardPass, x: TensorSize, trainable: bool) -> TensorSize:
    """``LlamaRMSNorm``: ``w * (x32 * rsqrt(mean(x32**2) + eps)).to(x.dtype)``.

    ``pow`` saves ``x32``, ``rsqrt`` its fp32 result (one value per token), ``mul`` both; the weight
    ``mul`` saves the normalized input only when the weight trains.
    """
    x32 = _cast(x, 4)
    if x32.grad:
        S.add("rmsnorm: input (fp32)", x32)
        S.add("rmsnorm: rsqrt", TensorSize(fwd.tokens, 4, True))
    y = _cast(TensorSize(x.numel, 4, x32.grad), x.itemsize)
    if trainable:
        S.add("rmsnorm: normalized input (weight trains)", y)
    return TensorSize(x.numel, max(fwd.rest_itemsize, x.itemsize), x.grad or trainable)


def _linear(S: SavedTensors, fwd: ForwardPass, key: str, x: TensorSize, out_features: int, in_features: int,
            trainable: bool, quantized: bool, lora: bool, saved_as: str, weight_itemsize: int | None = None) -> TensorSize:
    """``nn.Linear`` / bitsandbytes ``Linear4bit``, with PEFT's LoRA branch when ``lora``.

    - plain: ``mm`` saves its input when the weight trains (and the weight, a parameter, when the input
      needs a gradient). Under autocast the input is cast to 16-bit first (a new tensor per op) and
      fp32 weights are cast to a 16-bit copy that ``mm`` saves: activation memory, not parameters.
    - 4-bit: ``MatMul4Bit`` keeps the packed weight in ``ctx.tensors``, not as a saved activation.
    - LoRA (PEFT): ``x`` cast to the adapters' fp32 (``lora.Linear`` always; ``lora.Linear4bit`` only
      without CUDA autocast), ``lora_A`` saves that input, ``lora_B`` saves ``A x`` (rank ``r``); under
      autocast both see 16-bit copies of input and adapter weights.
    """
    r, n, ad = fwd.recipe.lora_r, fwd.tokens, fwd.recipe.adapter_itemsize
    if quantized:
        xc = _cast(x, fwd.compute_itemsize)
        out = _cast(TensorSize(n * out_features, xc.itemsize, xc.grad), x.itemsize)
    elif fwd.autocast:
        xc = _cast(x, 2)
        w16 = fwd.autocast_weight(key, out_features * in_features, weight_itemsize or fwd.base_itemsize, trainable)
        if trainable:
            S.add(f"{saved_as}: input", xc)
        if xc.grad:
            S.add(f"{saved_as}: 16-bit weight copy (autocast)", w16)
        out = TensorSize(n * out_features, 2, xc.grad or trainable)
    else:
        if trainable:
            S.add(f"{saved_as}: input", x)
        out = TensorSize(n * out_features, x.itemsize, x.grad or trainable)
    if not lora:
        return out
    # lora.Linear4bit skips the cast when ``torch.is_autocast_enabled()``, which reports CUDA's autocast only
    peft_casts = not (quantized and fwd.autocast and fwd.recipe.device == "cuda")
    xa = _cast(x, ad) if peft_casts else x
    if fwd.autocast:
        xa16 = _cast(xa, 2)
        S.add("lora_A: input", xa16)
        if xa16.grad:
            S.add("lora_A/B: 16-bit adapter copies (autocast)", fwd.autocast_weight(key + ".A", r * in_features, ad, True))
        S.add("lora_A/B: 16-bit adapter copies (autocast)", fwd.autocast_weight(key + ".B", out_features * r, ad, True))
        a = TensorSize(n * r, 2, True)
    else:
        S.add("lora_A: input", xa)
        a = TensorSize(n * r, ad, True)
    S.add("lora_B: input (rank r)", a)  # (``* scaling`` saves a wrapped Python number: no tensor storage)
    return TensorSize(out.numel, out.itemsize, True)


@dataclass
class LayerLedger:
    """What one decoder layer's forward leaves for backward."""

    saved: SavedTensors
    input: TensorSize
    output: TensorSize
    down_only: int  # bytes saved only for down_proj's backward (freed before the MLP's mul backward)
    mlp_itemsize: int


def _decoder_layer(fwd: ForwardPass, index: int, x: TensorSize, rope: tuple[TensorSize, TensorSize], rope_saved: SavedTensors) -> LayerLedger:
    """``LlamaDecoderLayer``: norm, attention, residual, norm, MLP, residual."""
    S, rc = SavedTensors(), fwd.recipe
    full, shape = rc.method == "full", fwd.shape
    lin = shape.linear_shapes()

    def linear(name: str, inp: TensorSize) -> TensorSize:
        o, n = lin[name]
        return _linear(S, fwd, f"{index}.{name}", inp, o, n, trainable=full, quantized=rc.method == "qlora",
                       lora=rc.uses_adapters and name in rc.lora_targets, saved_as=name)

    n1 = _rmsnorm(S, fwd, x, full)
    q, k, v = linear("q_proj", n1), linear("k_proj", n1), linear("v_proj", n1)
    cos, sin = rope
    q_rot = TensorSize(q.numel, max(q.itemsize, cos.itemsize), q.grad)  # q*cos + rotate_half(q)*sin
    k_rot = TensorSize(k.numel, max(k.itemsize, cos.itemsize), k.grad)
    if q.grad or k.grad:
        rope_saved.add("rotary: cos, sin (once)", cos, sin)
    if fwd.autocast:  # scaled_dot_product_attention is on autocast's 16-bit list
        q_rot, k_rot, v = _cast(q_rot, 2), _cast(k_rot, 2), _cast(v, 2)
    attn = TensorSize(q_rot.numel, q_rot.itemsize, q_rot.grad or k_rot.grad or v.grad)
    if attn.grad:  # flash kernel (CPU and CUDA): q, k, v (GQA: not repeated), output, log-sum-exp
        S.add("attention: q, k, v, output", q_rot, k_rot, v, attn)
        S.add("attention: log-sum-exp (fp32)", TensorSize(fwd.recipe.batch_size * shape.heads * fwd.recipe.seq_len, 4, True))
    o = linear("o_proj", attn)
    x1 = TensorSize(x.numel, max(x.itemsize, o.itemsize), x.grad or o.grad)
    n2 = _rmsnorm(S, fwd, x1, full)
    g, u = linear("gate_proj", n2), linear("up_proj", n2)
    if g.grad:
        S.add("silu: input", g)
    s = TensorSize(g.numel, g.itemsize, g.grad)
    if u.grad:
        S.add("mul: silu output", s)
    if s.grad:
        S.add("mul: up output", u)
    p = TensorSize(g.numel, max(s.itemsize, u.itemsize), s.grad or u.grad)
    before = S.bytes
    down = linear("down_proj", p)
    down_only = S.bytes - before
    x2 = TensorSize(x1.numel, max(x1.itemsize, down.itemsize), x1.grad or down.grad)
    return LayerLedger(S, x, x2, down_only, p.itemsize)


@dataclass
class ActivationLedger:
    """The forward pass's saved tensors: per layer, at the head (final norm, logits, loss), and shared."""

    layers: list[LayerLedger]
    head: SavedTensors
    shared: SavedTensors  # embedding indices, rotary cos/sin
    rope_bytes: int  # cos + sin: alive during the whole step, saved or not
    logits_numel: int  # elements of the whole logits (0 with the chunked loss, which never makes them)
    checkpointing: bool
    final_hidden: TensorSize | None = None  # the final norm's output, what the LM head (or the chunked loss) reads

    @property
    def checkpoint_inputs(self) -> int:
        """Bytes the non-reentrant checkpoint keeps per layer: the layer input (``save_for_backward``)."""
        return sum(layer.input.nbytes for layer in self.layers) if self.checkpointing else 0

    @property
    def total(self) -> int:
        """Saved bytes at the end of the forward pass: what ``utils.count_saved_tensors`` reports."""
        if self.checkpointing:
            return self.head.bytes + self.shared_bytes(without_rope=True) + self.checkpoint_inputs
        return self.head.bytes + self.shared.bytes + sum(layer.saved.bytes for layer in self.layers)

    def saved_tensors(self) -> list[tuple[str, TensorSize]]:
        """Every tensor in :attr:`total`, with the op that saved it (layer inputs under checkpointing)."""
        out = list(self.head.tensors.values())
        out += [(w, t) for w, t in self.shared.tensors.values() if not (self.checkpointing and w.startswith("rotary"))]
        for layer in self.layers:
            out += [("checkpoint: layer input", layer.input)] if self.checkpointing else list(layer.saved.tensors.values())
        return out

    def offloaded(self) -> int:
        """Bytes that activation offloading copies to the host (:func:`offloads`), of :attr:`total`."""
        return sum(t.nbytes for what, t in self.saved_tensors() if offloads(what, t))

    def shared_bytes(self, without_rope: bool = False) -> int:
        return sum(t.nbytes for what, t in self.shared.tensors.values()
                   if not (without_rope and what.startswith("rotary")))

    def by_op(self) -> dict[str, int]:
        """Saved bytes by op, summed over the layers (without checkpointing)."""
        out: dict[str, int] = {}
        for s in [layer.saved for layer in self.layers] + [self.head, self.shared]:
            for k, v in s.by_op().items():
                out[k] = out.get(k, 0) + v
        return out


def offloads(what: str, t: TensorSize) -> bool:
    """Whether trl's activation offloading (``trl/models/activation_offloading.py``) copies this saved
    tensor to the host: not if it is under :data:`MIN_OFFLOAD_BYTES`, nor if the output head saved it
    (``get_act_offloading_ctx_manager`` turns offloading off around ``lm_head``). Parameters are never
    offloaded, and are not in the ledger."""
    return t.nbytes >= MIN_OFFLOAD_BYTES and not what.startswith("lm_head")


def _chunked_loss(S: SavedTensors, fwd: ForwardPass, hidden: TensorSize) -> None:
    """What trl's ``ChunkedLogProbFunction`` and the fused forward around it save (see :mod:`.loss`).

    The hidden states without the last position, flattened: a copy (Triton path: ``hidden[mask]``;
    torch path: ``reshape`` of a strided slice), or a view of the final norm's output for one sequence
    on the torch path; the targets (int64); ``log_z`` and the entropy (fp32, one per token); the
    label masks of the outputs that need a gradient (one ``masked_fill`` mask each on the torch path,
    one shared ``masked_scatter`` mask with Triton); the token count the loss divides by (0-d int64).
    """
    rc, h = fwd.recipe, fwd.shape.hidden
    n = L.scored_tokens(rc.batch_size, rc.seq_len)
    triton = rc.device == "cuda"
    view = not triton and rc.batch_size == 1
    S.add("chunked loss: hidden states", hidden if view else TensorSize(n * h, hidden.itemsize, hidden.grad))
    S.add("chunked loss: targets (int64)", TensorSize(n, 8, False))
    S.add("chunked loss: log_z, entropy (fp32)", TensorSize(n, 4, False), TensorSize(n, 4, True))
    S.add("chunked loss: label masks", *[TensorSize(n, 1, False) for _ in range(1 if triton else L.MASKS_SAVED_TORCH)])
    S.add("chunked loss: token count", TensorSize(1, 8, False))


def activation_ledger(shape: ModelShape, recipe: Recipe) -> ActivationLedger:
    """Walk ``LlamaForCausalLM.forward`` with labels for one batch and record what autograd saves."""
    full = recipe.method == "full"
    base, rest = recipe.weight_itemsize, recipe.rest_itemsize
    compute = 4 if recipe.precision == "fp32" else 2
    fwd = ForwardPass(shape, recipe, recipe.batch_size * recipe.seq_len, autocast=recipe.precision == "mixed",
               base_itemsize=base, compute_itemsize=compute, rest_itemsize=rest)
    shared, head = SavedTensors(), SavedTensors()
    x = TensorSize(fwd.tokens * shape.hidden, rest, full)  # embedding output, in the embedding's dtype
    if full:
        shared.add("embedding: token ids (int64)", TensorSize(fwd.tokens, 8, False))
    # LlamaRotaryEmbedding returns cos, sin in the hidden states' dtype
    rope = (TensorSize(recipe.seq_len * shape.head_dim, rest, False), TensorSize(recipe.seq_len * shape.head_dim, rest, False))
    layers = []
    for index in range(shape.layers):
        layer = _decoder_layer(fwd, index, x, rope, shared)
        layers.append(layer)
        x = layer.output
    n = _rmsnorm(head, fwd, x, full)
    if recipe.chunked_loss:
        _chunked_loss(head, fwd, n)
        logits_numel = 0
    else:
        logits = _linear(head, fwd, "lm_head", n, shape.vocab, shape.hidden, trainable=full, quantized=False,
                         lora=False, saved_as="lm_head", weight_itemsize=rest)
        head.add("loss: log_softmax output (fp32)", TensorSize(logits.numel, 4, True))
        head.add("loss: shifted labels (int64)", TensorSize(fwd.tokens, 8, False))
        head.add("loss: total weight", TensorSize(1, 4, False))
        logits_numel = logits.numel
    return ActivationLedger(layers, head, shared, sum(t.nbytes for t in rope), logits_numel, recipe.checkpointing,
                            final_hidden=n)

