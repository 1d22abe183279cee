"""The set-up that several notebooks repeat: a language-modelling batch, the LoRA and SFT configs, the adapters' dtype.

Notebook 05 writes ``LoraConfig`` and ``SFTConfig`` out by hand and asserts that they equal :func:`lora_config`
and :func:`sft_config`; notebooks 06 and 10 train with these. Notebooks 01 and 02 measure a training step on
:func:`lm_batch`. peft and trl are imported inside the functions, so that ``import utils`` stays quick and
``utils.quiet()`` runs before bitsandbytes prints its import-time notice.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from .device import dtype_from_name, mixed_precision_flags

if TYPE_CHECKING:
    from peft import LoraConfig
    from trl import SFTConfig


def lm_batch(token_ids: torch.Tensor, batch_size: int, seq_len: int, device: torch.device | str | None = None,
             **model_kwargs: Any) -> dict[str, Any]:
    """A causal-LM training batch: the first ``batch_size * seq_len`` tokens of ``token_ids`` as ``batch_size`` rows.

    The labels are the input ids themselves, the same tensor: a transformers causal LM shifts them by one
    position inside its loss. The ids are copied into their own storage, so that a memory measurement counts the
    batch's bytes, not those of the whole text it was cut from. ``model_kwargs`` go into the batch as further
    arguments of the model's forward (``use_cache=False``), so that ``model(**batch)`` passes them.
    """
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids must be one sequence of token ids (1-D); got shape {tuple(token_ids.shape)}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive; got {batch_size} and {seq_len}")
    needed = batch_size * seq_len
    if token_ids.numel() < needed:
        raise ValueError(f"a batch of {batch_size} x {seq_len} tokens needs {needed:,} tokens; the text has "
                         f"{token_ids.numel():,}: use a longer text or a smaller batch")
    ids = token_ids[:needed].reshape(batch_size, seq_len).clone().to(token_ids.device if device is None else device)
    return {"input_ids": ids, "labels": ids, **model_kwargs}


def lora_config(r: int, alpha: float, **overrides: Any) -> LoraConfig:
    """The course's adapter as a peft ``LoraConfig``: rank ``r``, scale ``alpha / r``, on every linear layer.

    ``target_modules="all-linear"`` adapts every linear layer but the output layer, whatever the architecture
    calls them (the QLoRA recipe); no dropout; ``task_type="CAUSAL_LM"``. ``overrides`` set any other
    ``LoraConfig`` field, e.g. ``target_modules=[...]``.

    Build a new config for each model: ``get_peft_model`` keeps the config it is given and writes into it
    (``target_modules`` becomes the names it resolved on that model, ``base_model_name_or_path`` that model's
    path), so a config shared by two models would carry the first one's.
    """
    from peft import LoraConfig

    kwargs = dict(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return LoraConfig(**{**kwargs, **overrides})


def sft_config(output_dir: str | os.PathLike, device: torch.device | str, *, max_steps: int, batch_size: int,
               learning_rate: float, seed: int, **overrides: Any) -> SFTConfig:
    """The course's trl ``SFTConfig`` for a LoRA or QLoRA run of ``max_steps`` optimizer steps on ``device``.

    - the loss on the completion only (``completion_only_loss=True``, trl's choice for prompt/completion data,
      written out); a learning rate that warms up over the first 5% of the steps, then decays linearly;
    - precision from the device, ``utils.mixed_precision_flags(device)``: bf16 or fp16 autocast on a GPU,
      neither on the CPU (trl's own default is ``bf16=True``);
    - on a GPU, gradient checkpointing (non-reentrant: it works on a frozen base), paged AdamW (the QLoRA paper's
      optimizer, §3; bitsandbytes pages its states to CPU memory when the GPU runs short) and pinned memory for the
      batches; on the CPU, none of these: at the course's sizes checkpointing only costs time, and plain AdamW;
    - a loss logged every 10 steps (every step of a shorter run), no checkpoints saved, no experiment tracker,
      the progress bar on (``utils.quiet()`` would hide it), ``seed`` for the Trainer's torch seed and its data order.

    ``overrides`` replace any of these or set other ``SFTConfig`` fields (``save_strategy="steps"``,
    ``lr_scheduler_type=...``). ``gradient_checkpointing(_kwargs)`` are trl's names, used here; transformers 5
    renamed them ``activation_checkpointing(_kwargs)`` and keeps the old ones as aliases until v6; an override
    under either name wins.
    """
    from trl import SFTConfig

    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1; got {max_steps}")
    on_gpu = torch.device(device).type == "cuda"
    kwargs = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.05,  # a float: a fraction of max_steps
        logging_steps=min(10, max_steps),
        save_strategy="no",
        report_to="none",
        disable_tqdm=False,
        seed=seed,
        data_seed=seed,
        completion_only_loss=True,
        gradient_checkpointing=on_gpu,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        optim="paged_adamw_32bit" if on_gpu else "adamw_torch",
        dataloader_pin_memory=on_gpu,
        **mixed_precision_flags(torch.device(device)),
    )
    return SFTConfig(**{**kwargs, **overrides})


def adapters_in_training_dtype(model: torch.nn.Module, compute_dtype: torch.dtype | str) -> int:
    """Cast the trainable parameters (the adapters) to fp32 unless the run computes in bf16; return how many were cast.

    trl's ``SFTTrainer`` casts the adapters of a quantized model to bf16, the QLoRA paper's choice on bf16 GPUs
    (``trl/trainer/sft_trainer.py``). With fp32 compute (the CPU) that only loses precision, and with fp16 autocast
    (GPUs without bf16, e.g. a T4) the gradient scaler cannot unscale bf16 gradients on CUDA
    (``NotImplementedError: "_amp_foreach_non_finite_check_and_unscale_cuda" not implemented for 'BFloat16'``,
    notebook 10): there the adapters must be fp32. Call it after building the trainer and before
    ``train()``, which creates the optimizer for the parameters as they are then. Frozen parameters are left alone.
    """
    compute_dtype = dtype_from_name(compute_dtype)
    if compute_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"compute_dtype must be float32, bfloat16 or float16; got {compute_dtype}")
    if compute_dtype == torch.bfloat16:
        return 0
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            cast += 1
    return cast
