"""The training side of the estimate: :class:`Recipe`, how the model is trained, with its checks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

METHODS = ("full", "lora", "qlora")
PRECISIONS = ("fp32", "mixed", "bf16")
OPTIMIZERS = ("adamw", "adamw_fused", "adamw8bit", "paged_adamw", "paged_adamw8bit")
DEVICES = ("cpu", "cuda")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")  # peft/utils/constants.py, "llama"

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
    - ``prepare_kbit`` (QLoRA only): ``peft.prepare_model_for_kbit_training`` was called, which casts
      every parameter that is not 4-bit (embedding, norms, untied head) to fp32, so that the residual
      stream and the logits run in fp32 too. (Called with ``use_reentrant=False`` checkpointing kwargs,
      as notebook 06 does, it adds no input-gradient hook.)

    Three options for what sets the peak besides weights and activations (``batch_size`` is always the
    batch of one forward pass):

    - ``chunked_loss``: the loss computed as trl 1.16's ``SFTTrainer`` does by default
      (``loss_type="nll"``: ``add_fused_lm_head``), tile by tile over tokens and vocabulary, never
      holding the ``(tokens, vocab)`` logits; see :mod:`utils.estimator.loss`. Its tile buffer is
      32768 words wide whatever the vocabulary, so below that size it costs more than the plain loss.
    - ``accumulation_steps``: gradient accumulation (the Trainer's ``gradient_accumulation_steps``):
      ``accumulation_steps`` forward/backward passes of ``batch_size`` sequences each, then one
      optimizer step (effective batch ``batch_size * accumulation_steps``). Activations are freed after
      each micro-batch; what stays resident across micro-batches is the gradients (accumulated in
      place from the second micro-batch on), beside the weights and optimizer states. So the peak grows
      by at most the gradients, never with the number of micro-batches.
    - ``offload_activations``: saved activations are copied to CPU RAM in forward and back in backward,
      as trl's ``SFTConfig(activation_offloading=True)`` does (``trl/models/activation_offloading.py``;
      ``torch.autograd.graph.save_on_cpu`` is the plain-torch form, which also copies parameters that
      ops save). The GPU keeps tensors under 1024 bytes and what the output head saves, and during
      backward the part being differentiated (the loss's, or one decoder layer's, brought back).
      ``Estimate.offloaded`` reports the bytes moved to the host. On ``device="cpu"`` host and device
      are the same memory: the peak does not change and ``offloaded`` counts what would move.
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
    prepare_kbit: bool = False
    chunked_loss: bool = False
    accumulation_steps: int = 1
    offload_activations: bool = False

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("adapter_dtype", self.adapter_dtype, ("fp32", "bf16"))
        for f in ("batch_size", "seq_len", "lora_r", "accumulation_steps"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Recipe.{f} must be a positive integer, got {value!r}.")
        for f in ("checkpointing", "double_quant", "prepare_kbit", "chunked_loss", "offload_activations"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"Recipe.{f} must be True or False, got {getattr(self, f)!r}.")
        if self.prepare_kbit and self.method != "qlora":
            raise ValueError(f"Recipe.prepare_kbit applies to method='qlora' (a 4-bit base), not {self.method!r}: "
                             "set prepare_kbit=False.")
        if self.chunked_loss and self.seq_len < 2:
            raise ValueError("Recipe.chunked_loss scores every position but the last: it needs seq_len >= 2.")
        object.__setattr__(self, "lora_targets", _resolve_targets(self.lora_targets))

    @property
    def uses_adapters(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def weight_itemsize(self) -> int:
        """Bytes per element of the linear layers' stored weights before any 4-bit packing: 4 in fp32, and
        for full fine-tuning under autocast (fp32 master weights); else 2 (16-bit)."""
        if self.precision == "fp32" or (self.precision == "mixed" and self.method == "full"):
            return 4
        return 2

    @property
    def rest_itemsize(self) -> int:
        """Bytes per element of the embedding, norms and untied head: fp32 after ``prepare_kbit``, else as
        the weights."""
        return 4 if self.prepare_kbit else self.weight_itemsize

    @property
    def adapter_itemsize(self) -> int:
        """Bytes per element of the LoRA adapters (``adapter_dtype``)."""
        return 4 if self.adapter_dtype == "fp32" else 2

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
        name += " +ckpt" if self.checkpointing else ""
        name += " +kbit-prep" if self.prepare_kbit else ""
        name += " +chunked loss" if self.chunked_loss else ""
        name += f" x{self.accumulation_steps} accum" if self.accumulation_steps > 1 else ""
        return name + (" +offload" if self.offload_activations else "")


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

