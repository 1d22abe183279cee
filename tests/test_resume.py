"""Interrupt and resume a QLoRA run with the optimizers of the GPU set-up (notebook 06 uses them on CUDA).

Notebook 06 shows on the CPU, with ``adamw_torch``, that a run stopped after a checkpoint and resumed from
it ends where the uninterrupted run ends. On a GPU its Trainer uses ``optim="paged_adamw_32bit"``, whose
state goes through bitsandbytes' own ``state_dict``/``load_state_dict`` (upstream has bug reports about
resuming it). bitsandbytes 0.50.2 runs its AdamW optimizers on the CPU, so the same check runs here with
them, on a tiny random-weight Llama quantized to NF4 with LoRA adapters.

What this does and does not test, on the CPU:
- tested: the Trainer saves and restores bitsandbytes' optimizer states (32-bit, and 8-bit with its
  quantization maps and absmax), the scheduler and the data order, and the resumed run ends with the same
  loss and adapter weights; a control resumes without the optimizer file and must *fail* the comparison;
- not tested: paging itself (CUDA unified memory; on the CPU bitsandbytes falls back to ordinary tensors,
  and on a GPU it pages only tensors of 100,000 elements or more), CUDA kernels, bf16/fp16 adapters.
"""
from __future__ import annotations

import warnings

import pytest
import torch

STEPS, STOP_AT, BATCH, SEQ = 6, 3, 4, 16
TOL = 1e-5  # fp32 on the CPU: the resumed run repeats the same kernels on the same data
OPTIMIZERS = ["paged_adamw_32bit", "adamw_bnb_8bit", "adamw_torch"]  # the last: what notebook 06 runs on the CPU


def data(vocab_size: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab_size, (STEPS * BATCH, SEQ), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def qlora_model(path):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from utils import nf4_config

    torch.manual_seed(0)
    quant = nf4_config(torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.float16)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # r=64: adapter matrices of >= 4096 elements, so that the 8-bit optimizer keeps 8-bit states for them
    return get_peft_model(model, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def trainer(path, output_dir, optim, callbacks=()):
    from transformers import Trainer, TrainingArguments

    model = qlora_model(path)
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=1e-3,
        lr_scheduler_type="linear", optim=optim, save_strategy="steps", save_steps=STOP_AT, logging_steps=1,
        report_to="none", seed=0, use_cpu=True, dataloader_pin_memory=False, disable_tqdm=True,
        bf16=False, fp16=False)
    return Trainer(model=model, args=args, train_dataset=data(model.config.vocab_size), callbacks=list(callbacks))


def adapters(t) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in t.model.state_dict().items() if "lora_" in k}


def last_loss(t) -> float:
    return [h["loss"] for h in t.state.log_history if "loss" in h][-1]


def eight_bit_states(t) -> int:
    """How many parameters the trainer's optimizer keeps in 8-bit states (uint8 with a per-block absmax)."""
    return sum(s["state1"].dtype == torch.uint8 and "absmax1" in s for s in t.optimizer.state.values() if "state1" in s)


def differences(a, b) -> tuple[float, float]:
    wa, wb = adapters(a), adapters(b)
    assert wa.keys() == wb.keys() and wa
    return abs(last_loss(a) - last_loss(b)), max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_resumed_run_ends_like_the_uninterrupted_one(tiny_model_dir, tmp_path, optim):
    from transformers import TrainerCallback

    class StopAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= STOP_AT

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
        try:
            full = trainer(tiny_model_dir, tmp_path / "full", optim)
        except (RuntimeError, NotImplementedError, ImportError) as e:  # a bitsandbytes without CPU optimizers
            pytest.skip(f"{optim} does not run on this machine's CPU ({type(e).__name__}: {e}); "
                        "its resume is untested here")
        full.train()
        inner = full.optimizer.optimizer  # under accelerate's wrapper
        if optim != "adamw_torch":
            assert type(inner).__module__.startswith("bitsandbytes"), type(inner)
            assert getattr(inner, "is_paged", False) == optim.startswith("paged"), type(inner)

        stopped = trainer(tiny_model_dir, tmp_path / "stopped", optim, callbacks=[StopAfterCheckpoint()])
        stopped.train()
        assert stopped.state.global_step == STOP_AT
        checkpoint = tmp_path / "stopped" / f"checkpoint-{STOP_AT}"
        assert (checkpoint / "optimizer.pt").is_file()

        if optim == "adamw_bnb_8bit":  # 8-bit states with their absmax are what is saved and restored
            assert eight_bit_states(stopped) > 0

        resumed = trainer(tiny_model_dir, tmp_path / "stopped", optim)
        resumed.train(resume_from_checkpoint=str(checkpoint))
        assert resumed.state.global_step == STEPS
        if optim == "adamw_bnb_8bit":
            assert eight_bit_states(resumed) == eight_bit_states(stopped)
        loss_diff, weight_diff = differences(full, resumed)
        assert loss_diff <= TOL and weight_diff <= TOL, f"resuming changed the run: {loss_diff=:.1e} {weight_diff=:.1e}"

        # Control: the same resume without the optimizer's states must be caught by the comparison above.
        (checkpoint / "optimizer.pt").unlink()
        fresh_states = trainer(tiny_model_dir, tmp_path / "stopped", optim)
        fresh_states.train(resume_from_checkpoint=str(checkpoint))
        control_diff = differences(full, fresh_states)[1]
        print(f"{optim}: resumed vs uninterrupted: loss {loss_diff:.1e}, adapters {weight_diff:.1e}; "
              f"without optimizer.pt: adapters {control_diff:.1e}")
        assert control_diff > 100 * TOL, "the comparison cannot tell a lost optimizer state"
