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

Assumptions, stated: unpadded batches (no attention mask, or an all-ones mask, which transformers
drops: SDPA then runs the causal flash kernel and saves q, k, v, output and the log-sum-exp);
dropout 0 (PEFT's default ``lora_dropout=0`` uses ``nn.Identity``); ``use_cache=False`` as the
Trainer sets it; the steady state of training (optimizer states exist before the step).

Validated on the CPU (``tests/test_estimator.py``, notebook 07): weights, gradients, states and saved
activations exactly, the peak within 1% for full fine-tuning, LoRA and QLoRA, with and without
checkpointing, in fp32, bf16 and autocast. On CUDA the same rules apply with these differences,
which no GPU has checked yet: torch's default AdamW there is the foreach implementation (one
moment's worth of temporaries), fused kernels and bitsandbytes' optimizers have none; PEFT's
``lora.Linear4bit`` skips its input cast under CUDA autocast; the attention kernel (flash or
memory-efficient) is assumed to save what the CPU flash kernel saves; paged optimizer states live in
unified memory that ``max_memory_allocated`` does not count.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

GiB = 2**30
MIN_8BIT_SIZE = 4096  # bitsandbytes optimizers keep fp32 states for parameters smaller than this
OPTIMIZER_BLOCK = 256  # bitsandbytes 8-bit optimizer states: one fp32 absmax per 256 values
NF4_BLOCK = 64  # bitsandbytes quantize_4bit: one absmax per 64 weights
NESTED_BLOCK = 256  # double quantization: one fp32 absmax per 256 first-level absmax
CPU_RNG_STATE_BYTES = 5056  # torch.get_rng_state().numel(): the Mersenne Twister state checkpointing stashes
CUDA_OVERHEAD_BYTES = 1 * GiB  # stated assumption (not measured here): CUDA context, kernels, fragmentation

METHODS = ("full", "lora", "qlora")
PRECISIONS = ("fp32", "mixed", "bf16")
OPTIMIZERS = ("adamw", "adamw_fused", "adamw8bit", "paged_adamw", "paged_adamw8bit")
DEVICES = ("cpu", "cuda")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")  # peft/utils/constants.py, "llama"
# transformers model types built as the estimator models them: decoder blocks of attention (grouped-query
# allowed) and a gated three-matrix MLP, RMSNorm, no position-embedding table. (Qwen2 adds biases to q, k and
# v: 3 x hidden numbers per block, left out.)
LLAMA_LIKE = ("llama", "mistral", "qwen2")
_NOT_MODELLED = {  # model_type: what the estimator does not model
    "gpt2": "GPT-2's Conv1D layers with biases, its two-matrix GELU MLP and its learned position embeddings",
    "gpt_neo": "GPT-Neo's biases, two-matrix GELU MLP, local attention and learned position embeddings",
    "opt": "OPT's biases, two-matrix ReLU MLP, LayerNorm and learned position embeddings",
}
GPUS = {  # memory as nvidia-smi reports it (MiB): a "16 GB" T4 shows 15360 MiB, the others their nominal size
    "T4 16 GB": 15 * GiB,
    "RTX 3090/4090 24 GB": 24 * GiB,
    "A100 40 GB": 40 * GiB,
    "A100 80 GB": 80 * GiB,
}

_CONFIG_FIELDS = {  # ModelShape field: transformers config attribute
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "intermediate": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "vocab": "vocab_size",
    "tied_embeddings": "tie_word_embeddings",
}


# --------------------------------------------------------------------------------------------------
# The model: the few numbers that matter
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-style decoder that set its training memory.

    ``head_dim`` defaults to ``hidden // heads``; ``name`` and ``source`` are labels only.
    """

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    head_dim: int | None = None
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        for f in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelShape.{f} must be a positive integer, got {value!r}.")
        if not isinstance(self.tied_embeddings, bool):
            raise ValueError(f"ModelShape.tied_embeddings must be True or False, got {self.tied_embeddings!r}.")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads}).")
        if self.head_dim is None:
            if self.hidden % self.heads:
                raise ValueError(f"hidden ({self.hidden}) is not a multiple of heads ({self.heads}): give head_dim.")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        elif isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ValueError(f"ModelShape.head_dim must be a positive integer, got {self.head_dim!r}.")

    @property
    def d(self) -> int:
        """The head dimension (always set after construction)."""
        assert self.head_dim is not None
        return self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{name: (out_features, in_features)}`` of the seven linear layers of one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.d, self.kv_heads * self.d
        return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}

    def parameters(self) -> int:
        """Number of parameters (tied embeddings counted once)."""
        per_layer = sum(o * n for o, n in self.linear_shapes().values()) + 2 * self.hidden
        heads = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + heads + self.hidden


def shape_from_config(config: Any, name: str = "", source: str = "") -> ModelShape:
    """A :class:`ModelShape` from a ``transformers`` config or a mapping with the same keys.

    Also accepts the ModelShape field names (``layers``, ``hidden`` ...). A missing field raises a
    ``ValueError`` that names it; so does a ``model_type`` outside :data:`LLAMA_LIKE` (it names what the
    estimator does not model), and a config with biases in attention or MLP.
    """
    if isinstance(config, ModelShape):
        return config
    get = config.get if isinstance(config, Mapping) else (lambda k, default=None: getattr(config, k, default))
    model_type = get("model_type", None)  # absent in data/configs/*.json, which are all Llama-style
    if model_type is not None and model_type not in LLAMA_LIKE:
        what = _NOT_MODELLED.get(model_type, "its layers, whose shapes and sizes it does not know")
        raise ValueError(f"The estimator models Llama-style decoders ({', '.join(LLAMA_LIKE)}), not {model_type!r}: "
                         f"it does not model {what}, so it would give a wrong number. Measure this model with "
                         "utils.measure_training_step instead.")
    values: dict[str, Any] = {}
    missing = []
    for f, key in _CONFIG_FIELDS.items():
        value = get(key, get(f, None))
        if value is None and f == "kv_heads":
            value = get("num_attention_heads", get("heads", None))  # transformers: defaults to heads
        if value is None:
            missing.append(key)
        values[f] = value
    if missing:
        raise ValueError(f"The model config lacks {', '.join(repr(m) for m in missing)}. The estimator needs "
                         f"{', '.join(_CONFIG_FIELDS.values())} (and optionally head_dim).")
    for bias in ("attention_bias", "mlp_bias"):
        if get(bias, False):
            raise ValueError(f"{bias}=True is not modelled: the estimator covers bias-free Llama-style decoders.")
    head_dim = get("head_dim", None)
    return ModelShape(**values, head_dim=head_dim, name=name or str(get("name", "") or ""),
                      source=source or str(get("source", "") or ""))


def load_shape(path: str | os.PathLike) -> ModelShape:
    """Read a :class:`ModelShape` from a JSON file (``data/configs/*.json``, or a model's config.json)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No config file {path}.")
    data = json.loads(path.read_text(encoding="utf-8"))
    return shape_from_config(data, name=data.get("name", path.stem), source=data.get("source", str(path)))


def common_shapes(folder: str | os.PathLike | None = None) -> dict[str, ModelShape]:
    """The published architectures in ``data/configs`` (1B ... 70B), by name, smallest first."""
    folder = Path(folder) if folder else Path(__file__).resolve().parent.parent / "data" / "configs"
    shapes = [load_shape(p) for p in sorted(folder.glob("*.json"))]
    if not shapes:
        raise FileNotFoundError(f"No *.json architecture files in {folder}.")
    return {s.name: s for s in sorted(shapes, key=lambda s: s.parameters())}


# --------------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """How the model is trained.

    - ``method``: ``"full"`` (every weight trains), ``"lora"`` (frozen base + adapters of rank
      ``lora_r`` on ``lora_targets``), ``"qlora"`` (as LoRA, base linear layers in 4-bit NF4;
      ``double_quant`` quantizes their absmax too).
    - ``precision``: ``"fp32"`` (everything fp32); ``"bf16"`` (weights in 16-bit, computed in 16-bit;
      LoRA adapters stay fp32, as PEFT casts them; fp16 costs the same bytes); ``"mixed"`` (autocast:
      full fine-tuning keeps fp32 master weights, gradients and states and computes in 16-bit; LoRA and
      QLoRA keep the base in 16-bit and adapters in fp32, as the Trainer with ``bf16=True`` does).
    - ``optimizer``: ``"adamw"`` (``torch.optim.AdamW``, torch's default implementation: for-loop on
      the CPU, foreach on CUDA), ``"adamw_fused"`` (``fused=True``, the Trainer's default since torch 2.8),
      ``"adamw8bit"``, ``"paged_adamw"``, ``"paged_adamw8bit"`` (bitsandbytes).
    - ``lora_targets``: module names, ``"all-linear"`` (every linear layer but the output head), or
      ``None`` for PEFT's default for Llama (``q_proj``, ``v_proj``).
    - ``adapter_dtype``: ``"fp32"`` (PEFT's ``autocast_adapter_dtype=True`` default) or ``"bf16"``
      (the QLoRA paper's script casts the adapters to bf16).
    """

    method: str = "full"
    precision: str = "fp32"
    batch_size: int = 1
    seq_len: int = 512
    checkpointing: bool = False
    optimizer: str = "adamw"
    lora_r: int = 8
    lora_targets: tuple[str, ...] | str | None = None
    adapter_dtype: str = "fp32"
    double_quant: bool = True
    device: str = "cuda"

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("adapter_dtype", self.adapter_dtype, ("fp32", "bf16"))
        for f in ("batch_size", "seq_len", "lora_r"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Recipe.{f} must be a positive integer, got {value!r}.")
        for f in ("checkpointing", "double_quant"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"Recipe.{f} must be True or False, got {getattr(self, f)!r}.")
        object.__setattr__(self, "lora_targets", _resolve_targets(self.lora_targets))

    @property
    def uses_adapters(self) -> bool:
        return self.method in ("lora", "qlora")

    def label(self) -> str:
        """A short human-readable name: ``'QLoRA r=64 (all) mixed paged_adamw +ckpt'``."""
        name = {"full": "full", "lora": "LoRA", "qlora": "QLoRA"}[self.method]
        if self.uses_adapters:
            targets = self.lora_targets
            short = "all" if targets == LINEAR_NAMES else ",".join(t.split("_")[0] for t in targets)
            name += f" r={self.lora_r} ({short})"
        name += f" {self.precision}"
        if self.optimizer != "adamw":
            name += f" {self.optimizer}"
        return name + (" +ckpt" if self.checkpointing else "")


def _check_choice(what: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}. Use one of: {', '.join(choices)}.")


def _resolve_targets(targets: tuple[str, ...] | list[str] | str | None) -> tuple[str, ...]:
    """LoRA targets as a tuple of Llama linear-layer names, in model order."""
    if targets is None:
        return PEFT_DEFAULT_TARGETS
    if targets == "all-linear":
        return LINEAR_NAMES
    if isinstance(targets, str):
        targets = (targets,)
    unknown = [t for t in targets if t not in LINEAR_NAMES]
    if unknown or not targets:
        raise ValueError(f"Unknown LoRA target(s) {unknown or targets!r}. Use names from {', '.join(LINEAR_NAMES)}, "
                         "'all-linear', or None for PEFT's default.")
    return tuple(n for n in LINEAR_NAMES if n in targets)


# --------------------------------------------------------------------------------------------------
# Static memory: weights, gradients, optimizer states
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One parameter tensor of the model under a recipe, in the order ``model.parameters()`` yields it."""

    name: str
    numel: int
    itemsize: int  # bytes per element as stored (0.5 for NF4 is handled by ``quantized``)
    trainable: bool
    quantized: bool = False


def _dtype_bytes(precision: str, role: str) -> int:
    """Bytes per element of a stored tensor: ``role`` is ``"master"`` (full fine-tuning) or ``"base"``."""
    if precision == "fp32":
        return 4
    if precision == "mixed" and role == "master":
        return 4  # autocast keeps fp32 master weights
    return 2


def _adapter_itemsize(recipe: Recipe) -> int:
    return 4 if recipe.adapter_dtype == "fp32" else 2


def parameter_inventory(shape: ModelShape, recipe: Recipe) -> list[Param]:
    """Every parameter tensor, in ``named_parameters()`` order (PEFT inserts A, B after each base weight)."""
    full = recipe.method == "full"
    w = _dtype_bytes(recipe.precision, "master" if full else "base")
    out = [Param("embed_tokens", shape.vocab * shape.hidden, w, full)]
    for layer in range(shape.layers):
        for name, (o, n) in shape.linear_shapes().items():
            out.append(Param(f"{layer}.{name}", o * n, w, full, quantized=recipe.method == "qlora"))
            if recipe.uses_adapters and name in recipe.lora_targets:
                a = _adapter_itemsize(recipe)
                out.append(Param(f"{layer}.{name}.lora_A", recipe.lora_r * n, a, True))
                out.append(Param(f"{layer}.{name}.lora_B", o * recipe.lora_r, a, True))
        out += [Param(f"{layer}.input_layernorm", shape.hidden, w, full),
                Param(f"{layer}.post_attention_layernorm", shape.hidden, w, full)]
    out.append(Param("norm", shape.hidden, w, full))
    if not shape.tied_embeddings:
        out.append(Param("lm_head", shape.vocab * shape.hidden, w, full))
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
    packed, code = math.ceil(numel / 2), 16 * 4
    if not double_quant:
        return packed + code + 4 * blocks
    return packed + code + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 256 * 4


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
        return sum(2 * p.numel * p.itemsize + 4 for p in trainable)
    total = 0
    for p in trainable:
        if _uses_8bit_states(p, optimizer):
            total += 2 * p.numel + 2 * 4 * math.ceil(p.numel / OPTIMIZER_BLOCK)
        else:
            total += 2 * 4 * p.numel
    if any(_uses_8bit_states(p, optimizer) for p in trainable):
        total += 2 * 256 * 4
    return total


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
      states dequantized to fp32, the scaled gradient, the square root and ``denom``: 5 fp32 copies.
    """
    trainable = [p for p in params if p.trainable]
    if not trainable or optimizer == "adamw_fused" or (optimizer != "adamw" and device == "cuda"):
        return 0
    if optimizer == "adamw":
        sizes = [p.numel * p.itemsize for p in trainable]
        if device == "cuda":
            return sum(sizes)
        return max(2 * s + (sizes[k - 1] if k else 0) for k, s in enumerate(sizes))
    return max((5 if _uses_8bit_states(p, optimizer) else 3) * 4 * p.numel for p in trainable)


# --------------------------------------------------------------------------------------------------
# Activations: the forward pass, op by op
# --------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _T:
    """A tensor of the forward pass: elements, bytes per element, whether autograd tracks it."""

    numel: int
    itemsize: int
    grad: bool

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass
class _Saved:
    """Tensors saved for backward, each counted once (identity, like ``count_saved_tensors``'s storages)."""

    tensors: dict[int, tuple[str, _T]] = field(default_factory=dict)

    def add(self, what: str, *ts: _T | None) -> None:
        for t in ts:
            if t is not None:
                self.tensors.setdefault(id(t), (what, t))

    def __contains__(self, t: _T) -> bool:
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


def _cast(x: _T, itemsize: int) -> _T:
    """``x.to(dtype)``: the same tensor when the dtype already matches, else a new one (``ToCopyBackward`` saves nothing)."""
    return x if x.itemsize == itemsize else _T(x.numel, itemsize, x.grad)


@dataclass
class _Pass:
    """What the op rules need to know about one forward pass."""

    shape: ModelShape
    recipe: Recipe
    tokens: int
    autocast: bool
    base_itemsize: int  # stored bytes per element of base (or master) weights
    compute_itemsize: int  # bytes per element the linear layers compute in
    weight_copies: dict[str, _T] = field(default_factory=dict)  # autocast's cache of 16-bit weight casts

    def autocast_weight(self, key: str, numel: int, itemsize: int, trainable: bool) -> _T | None:
        """The 16-bit copy autocast makes of a weight (cached for trainable fp32 leaves), or None if already 16-bit."""
        if itemsize == 2:
            return None
        if trainable:
            return self.weight_copies.setdefault(key, _T(numel, 2, True))
        return _T(numel, 2, False)


def _rmsnorm(S: _Saved, ps: _Pass, x: _T, trainable: bool) -> _T:
    """``LlamaRMSNorm``: ``w * (x32 * rsqrt(mean(x32**2) + eps)).to(x.dtype)``.

    ``pow`` saves ``x32``, ``rsqrt`` its fp32 result (one value per token), ``mul`` both; the weight
    ``mul`` saves the normalized input only when the weight trains.
    """
    x32 = _cast(x, 4)
    if x32.grad:
        S.add("rmsnorm: input (fp32)", x32)
        S.add("rmsnorm: rsqrt", _T(ps.tokens, 4, True))
    y = _cast(_T(x.numel, 4, x32.grad), x.itemsize)
    if trainable:
        S.add("rmsnorm: normalized input (weight trains)", y)
    return _T(x.numel, max(ps.base_itemsize, x.itemsize), x.grad or trainable)


def _linear(S: _Saved, ps: _Pass, key: str, x: _T, out_features: int, in_features: int,
            trainable: bool, quantized: bool, lora: bool, saved_as: str) -> _T:
    """``nn.Linear`` / bitsandbytes ``Linear4bit``, with PEFT's LoRA branch when ``lora``.

    - plain: ``mm`` saves its input when the weight trains (and the weight, a parameter, when the input
      needs a gradient). Under autocast the input is cast to 16-bit first (a new tensor per op) and
      fp32 weights are cast to a 16-bit copy that ``mm`` saves: activation memory, not parameters.
    - 4-bit: ``MatMul4Bit`` keeps the packed weight in ``ctx.tensors``, not as a saved activation.
    - LoRA (PEFT): ``x`` cast to the adapters' fp32 (``lora.Linear`` always; ``lora.Linear4bit`` only
      without CUDA autocast), ``lora_A`` saves that input, ``lora_B`` saves ``A x`` (rank ``r``); under
      autocast both see 16-bit copies of input and adapter weights.
    """
    r, n, ad = ps.recipe.lora_r, ps.tokens, _adapter_itemsize(ps.recipe)
    if quantized:
        xc = _cast(x, ps.compute_itemsize)
        out = _cast(_T(n * out_features, xc.itemsize, xc.grad), x.itemsize)
    elif ps.autocast:
        xc = _cast(x, 2)
        w16 = ps.autocast_weight(key, out_features * in_features, ps.base_itemsize, trainable)
        if trainable:
            S.add(f"{saved_as}: input", xc)
        if xc.grad:
            S.add(f"{saved_as}: 16-bit weight copy (autocast)", w16)
        out = _T(n * out_features, 2, xc.grad or trainable)
    else:
        if trainable:
            S.add(f"{saved_as}: input", x)
        out = _T(n * out_features, x.itemsize, x.grad or trainable)
    if not lora:
        return out
    # lora.Linear4bit skips the cast when ``torch.is_autocast_enabled()``, which reports CUDA's autocast only
    peft_casts = not (quantized and ps.autocast and ps.recipe.device == "cuda")
    xa = _cast(x, ad) if peft_casts else x
    if ps.autocast:
        xa16 = _cast(xa, 2)
        S.add("lora_A: input", xa16)
        if xa16.grad:
            S.add("lora_A/B: 16-bit adapter copies (autocast)", ps.autocast_weight(key + ".A", r * in_features, ad, True))
        S.add("lora_A/B: 16-bit adapter copies (autocast)", ps.autocast_weight(key + ".B", out_features * r, ad, True))
        a = _T(n * r, 2, True)
    else:
        S.add("lora_A: input", xa)
        a = _T(n * r, ad, True)
    S.add("lora_B: input (rank r)", a)  # (``* scaling`` saves a wrapped Python number: no tensor storage)
    return _T(out.numel, out.itemsize, True)


@dataclass
class LayerLedger:
    """What one decoder layer's forward leaves for backward."""

    saved: _Saved
    input: _T
    output: _T
    down_only: int  # bytes saved only for down_proj's backward (freed before the MLP's mul backward)
    mlp_itemsize: int


def _decoder_layer(ps: _Pass, index: int, x: _T, rope: tuple[_T, _T], rope_saved: _Saved) -> LayerLedger:
    """``LlamaDecoderLayer``: norm, attention, residual, norm, MLP, residual."""
    S, rc = _Saved(), ps.recipe
    full, shape = rc.method == "full", ps.shape
    lin = shape.linear_shapes()

    def linear(name: str, inp: _T) -> _T:
        o, n = lin[name]
        return _linear(S, ps, f"{index}.{name}", inp, o, n, trainable=full, quantized=rc.method == "qlora",
                       lora=rc.uses_adapters and name in rc.lora_targets, saved_as=name)

    n1 = _rmsnorm(S, ps, x, full)
    q, k, v = linear("q_proj", n1), linear("k_proj", n1), linear("v_proj", n1)
    cos, sin = rope
    q_rot = _T(q.numel, max(q.itemsize, cos.itemsize), q.grad)  # q*cos + rotate_half(q)*sin
    k_rot = _T(k.numel, max(k.itemsize, cos.itemsize), k.grad)
    if q.grad or k.grad:
        rope_saved.add("rotary: cos, sin (once)", cos, sin)
    if ps.autocast:  # scaled_dot_product_attention is on autocast's 16-bit list
        q_rot, k_rot, v = _cast(q_rot, 2), _cast(k_rot, 2), _cast(v, 2)
    attn = _T(q_rot.numel, q_rot.itemsize, q_rot.grad or k_rot.grad or v.grad)
    if attn.grad:  # flash kernel (CPU and CUDA): q, k, v (GQA: not repeated), output, log-sum-exp
        S.add("attention: q, k, v, output", q_rot, k_rot, v, attn)
        S.add("attention: log-sum-exp (fp32)", _T(ps.recipe.batch_size * shape.heads * ps.recipe.seq_len, 4, True))
    o = linear("o_proj", attn)
    x1 = _T(x.numel, max(x.itemsize, o.itemsize), x.grad or o.grad)
    n2 = _rmsnorm(S, ps, x1, full)
    g, u = linear("gate_proj", n2), linear("up_proj", n2)
    if g.grad:
        S.add("silu: input", g)
    s = _T(g.numel, g.itemsize, g.grad)
    if u.grad:
        S.add("mul: silu output", s)
    if s.grad:
        S.add("mul: up output", u)
    p = _T(g.numel, max(s.itemsize, u.itemsize), s.grad or u.grad)
    before = S.bytes
    down = linear("down_proj", p)
    down_only = S.bytes - before
    x2 = _T(x1.numel, max(x1.itemsize, down.itemsize), x1.grad or down.grad)
    return LayerLedger(S, x, x2, down_only, p.itemsize)


@dataclass
class ActivationLedger:
    """The forward pass's saved tensors: per layer, at the head (final norm, logits, loss), and shared."""

    layers: list[LayerLedger]
    head: _Saved
    shared: _Saved  # embedding indices, rotary cos/sin
    rope_bytes: int  # cos + sin: alive during the whole step, saved or not
    logits_numel: int
    checkpointing: bool

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


def activation_ledger(shape: ModelShape, recipe: Recipe) -> ActivationLedger:
    """Walk ``LlamaForCausalLM.forward`` with labels for one batch and record what autograd saves."""
    full = recipe.method == "full"
    base = _dtype_bytes(recipe.precision, "master" if full else "base")
    compute = 4 if recipe.precision == "fp32" else 2
    ps = _Pass(shape, recipe, recipe.batch_size * recipe.seq_len, autocast=recipe.precision == "mixed",
               base_itemsize=base, compute_itemsize=compute)
    shared, head = _Saved(), _Saved()
    x = _T(ps.tokens * shape.hidden, base, full)  # embedding output, in the embedding's dtype
    if full:
        shared.add("embedding: token ids (int64)", _T(ps.tokens, 8, False))
    rope = (_T(recipe.seq_len * shape.d, base, False), _T(recipe.seq_len * shape.d, base, False))
    layers = []
    for index in range(shape.layers):
        layer = _decoder_layer(ps, index, x, rope, shared)
        layers.append(layer)
        x = layer.output
    n = _rmsnorm(head, ps, x, full)
    logits = _linear(head, ps, "lm_head", n, shape.vocab, shape.hidden, trainable=full, quantized=False,
                     lora=False, saved_as="lm_head")
    head.add("loss: log_softmax output (fp32)", _T(logits.numel, 4, True))
    head.add("loss: shifted labels (int64)", _T(ps.tokens, 8, False))
    head.add("loss: total weight", _T(1, 4, False))
    return ActivationLedger(layers, head, shared, sum(t.nbytes for t in rope), logits.numel, recipe.checkpointing)


# --------------------------------------------------------------------------------------------------
# The peak: the largest of a few moments of the step
# --------------------------------------------------------------------------------------------------

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

    - ``"loss backward"``: all saved activations, plus the fp32 gradients of the log-softmax output and
      of the logits (``nll_loss_backward``, ``_log_softmax_backward_data``): ``2 * tokens * vocab * 4``.
    - ``"MLP backward, layer l of L"`` (the top layer, processed first, and the bottom one, processed
      last): the gradients produced so far; the activations of the layers below (their checkpointed
      inputs, with checkpointing) and of this layer (recomputed, with checkpointing) except what only
      ``down_proj`` saved; as temporaries the incoming residual gradient and the larger of two
      instants: ``down_proj``'s backward (the input gradient of its LoRA branch, which runs first, or
      else what the base layer saved; the base's input gradient; for QLoRA the whole weight,
      dequantized by bitsandbytes for the input gradient) and ``mul``'s backward (the product's gradient and the two it makes, for the silu and
      up outputs). Held bytes change linearly from layer to layer, so the two ends bound the others.
    - ``"embedding backward"`` (tied, trainable embeddings): all gradients plus two vocabulary x hidden
      buffers (measured on the CPU: the embedding's gradient and its sum with the output head's).
    - ``"optimizer step"``: all gradients plus :func:`optimizer_temporary_bytes`.
    """
    params = params if params is not None else parameter_inventory(shape, recipe)
    ledger = ledger or activation_ledger(shape, recipe)
    W, S, G = weight_bytes(params, recipe), optimizer_state_bytes(params, recipe.optimizer), gradient_bytes(params)
    # Checkpointing keeps, besides the saved layer inputs, what the recomputation needs: the rotary
    # cos/sin and position ids passed as keyword arguments, and per layer the CPU RNG state that
    # torch.utils.checkpoint stashes (preserve_rng_state=True; on CUDA it stays in host memory).
    kept = 0
    if recipe.checkpointing:
        rng = CPU_RNG_STATE_BYTES if recipe.device == "cpu" else 0
        kept = ledger.rope_bytes + 8 * recipe.seq_len + shape.layers * rng
    moments = {"loss backward": _moment(W, S, 0, ledger.total + kept, 2 * ledger.logits_numel * 4)}
    layer_grads, other_grads = _layer_gradient_bytes(params, shape.layers)
    ids = sum(t.nbytes for what, t in ledger.shared.tensors.values() if what.startswith("embedding"))
    rope = kept if recipe.checkpointing else sum(
        t.nbytes for what, t in ledger.shared.tensors.values() if what.startswith("rotary"))
    if not shape.tied_embeddings:  # an untied embedding's gradient comes last, after every layer
        other_grads -= sum(p.numel * p.itemsize for p in params if p.trainable and p.name == "embed_tokens")
    n = recipe.batch_size * recipe.seq_len
    w_deq = shape.hidden * shape.intermediate * (4 if recipe.precision == "fp32" else 2)
    for l in sorted({shape.layers - 1, 0}, reverse=True):
        layer = ledger.layers[l]
        if recipe.checkpointing:
            below = sum(ledger.layers[j].input.nbytes for j in range(l))
            here = layer.input.nbytes + layer.saved.bytes - (layer.input.nbytes if layer.input in layer.saved else 0)
        else:
            below = sum(ledger.layers[j].saved.bytes for j in range(l))
            here = layer.saved.bytes
        grads = other_grads + sum(layer_grads[l + 1:]) + _down_gradient_bytes(params, l)
        mlp = n * shape.intermediate * layer.mlp_itemsize
        # down_proj's backward: its LoRA branch runs first (its saved input freed, its input gradient
        # kept), else what the base saved is still held; then the base's input gradient, from the
        # weight dequantized whole if it is 4-bit. mul's backward: the product's gradient and the
        # two it makes. Both on top of the incoming residual gradient.
        lora_down = recipe.uses_adapters and "down_proj" in recipe.lora_targets
        down = (mlp if lora_down else layer.down_only) + (w_deq if recipe.method == "qlora" else 0) + mlp
        transient = layer.output.nbytes + max(down, 3 * mlp)
        acts = ids + rope + below + here - layer.down_only
        moments[f"MLP backward, layer {l + 1} of {shape.layers}"] = _moment(W, S, grads, acts, transient)
    if recipe.method == "full" and shape.tied_embeddings:
        moments["embedding backward"] = _moment(W, S, G, 0, 2 * shape.vocab * shape.hidden * params[0].itemsize)
    moments["optimizer step"] = _moment(W, S, G, 0, optimizer_temporary_bytes(params, recipe.optimizer, recipe.device))
    return moments


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
    is what to compare with a GPU's memory.
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
    )


# --------------------------------------------------------------------------------------------------
# Checking the estimate: build a model for a recipe with random weights and measure one step
# --------------------------------------------------------------------------------------------------

def llama_config(shape: ModelShape, **overrides: Any):
    """A ``transformers.LlamaConfig`` with the numbers of ``shape`` (for models built with random weights)."""
    from transformers import LlamaConfig

    kwargs = dict(num_hidden_layers=shape.layers, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                  num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                  tie_word_embeddings=shape.tied_embeddings, head_dim=shape.d, max_position_embeddings=4096,
                  use_cache=False, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _half(device: str):
    """The 16-bit dtype of ``device``: bfloat16 on the CPU, ``utils.compute_dtype`` on CUDA (fp16 on a T4)."""
    import torch

    from .device import compute_dtype

    return torch.bfloat16 if torch.device(device).type == "cpu" else compute_dtype(torch.device(device))


def build_model(shape: ModelShape, recipe: Recipe, seed: int = 0, device: str | None = None):
    """A ``LlamaForCausalLM`` with random weights, prepared as ``recipe`` trains it.

    - ``bf16``/``mixed``: the model (LoRA, QLoRA: its base) in 16-bit (bfloat16; fp16 on GPUs without
      bf16); ``fp32``: float32.
    - QLoRA: the random weights are saved to a temporary folder and loaded back with a
      ``BitsAndBytesConfig`` (NF4, ``double_quant``), the way a real checkpoint is loaded.
    - LoRA/QLoRA: ``peft.get_peft_model`` with ``r=lora_r``, ``lora_alpha=2*r``, dropout 0 (PEFT keeps
      the adapters in fp32; ``adapter_dtype="bf16"`` casts them afterwards).
    - Checkpointing: ``activation_checkpointing_enable`` (transformers 5; ``gradient_checkpointing_enable`` is
      its deprecated alias) with ``use_reentrant=False``.
    """
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaForCausalLM

    from .loading import keep_4bit_layers_trainable

    device = device or recipe.device
    full = recipe.method == "full"
    dtype = torch.float32 if _dtype_bytes(recipe.precision, "master" if full else "base") == 4 else _half(device)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(shape)).to(dtype)
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
    """
    import torch

    model.config.use_cache = False
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


def measure_recipe(model, recipe: Recipe, seed: int = 0, steps: int = 2):
    """Train ``steps`` steps on random tokens and return the last one's ``utils.StepMemory``.

    The first step creates the optimizer states, so that the measured step is a steady-state one, as
    the estimate assumes. ``mixed`` runs the forward pass under ``torch.autocast`` (bfloat16; fp16 on
    GPUs without bf16).
    """
    import warnings

    import torch

    from .memory import measure_training_step

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (recipe.batch_size, recipe.seq_len), generator=generator)
    batch = {"input_ids": ids.to(device), "labels": ids.to(device)}
    autocast = recipe.precision == "mixed"

    def forward(m, b):
        with torch.autocast(device.type, dtype=_half(str(device)), enabled=autocast):
            return m(**b)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. bitsandbytes: paged optimizers fall back to unpaged on the CPU
        optimizer = make_optimizer(model, recipe)
        # utils.trace_memory keeps the garbage collector out of the measured step.
        return measure_training_step(model, batch, optimizer, forward=forward, warmup_steps=steps - 1)
