"""utils.training: the batch, the LoRA and SFT configs and the adapters' dtype that notebooks 01, 02, 05, 06 and 10 share."""
import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import utils.training
from utils.layers import linear_layers, linear_shape
from utils.training import adapters_in_training_dtype, lm_batch, lora_config, sft_config


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


# lm_batch

def test_lm_batch_cuts_consecutive_rows_and_labels_are_the_inputs():
    text = torch.arange(100)
    batch = lm_batch(text, 3, 8)
    assert batch.keys() == {"input_ids", "labels"}
    assert torch.equal(batch["input_ids"], torch.arange(24).reshape(3, 8))
    assert batch["labels"] is batch["input_ids"]  # the model shifts them; one tensor, counted once


def test_lm_batch_owns_its_storage():
    text = torch.arange(100)
    ids = lm_batch(text, 2, 4)["input_ids"]
    assert ids.untyped_storage().nbytes() == 2 * 4 * text.element_size()
    ids[0, 0] = -1
    assert text[0] == 0


def test_lm_batch_adds_forward_arguments_and_moves_to_the_device():
    batch = lm_batch(torch.arange(10), 1, 5, "cpu", use_cache=False)
    assert batch["use_cache"] is False and batch["input_ids"].device.type == "cpu"


@pytest.mark.parametrize("ids, batch_size, seq_len, message", [
    (torch.arange(10), 3, 4, "needs 12 tokens"),
    (torch.arange(12).reshape(3, 4), 1, 4, "1-D"),
    (torch.arange(10), 0, 4, "positive"),
])
def test_lm_batch_rejects_bad_input(ids, batch_size, seq_len, message):
    with pytest.raises(ValueError, match=message):
        lm_batch(ids, batch_size, seq_len)


# lora_config

def test_lora_config_is_the_course_adapter():
    config = lora_config(8, 16)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.0)
    assert config.target_modules == "all-linear" and config.task_type == "CAUSAL_LM"
    assert lora_config(4, 4, target_modules=["q_proj"], lora_dropout=0.1).target_modules == {"q_proj"}
    assert lora_config(4, 4, lora_dropout=0.1).lora_dropout == 0.1


def test_lora_config_adapts_every_linear_layer_but_the_output_layer():
    model = tiny_llama()
    linears = linear_layers(model)
    peft_model = get_peft_model(model, lora_config(4, 8))
    assert peft_model.get_nb_trainable_parameters()[0] == sum(4 * sum(linear_shape(m)) for m in linears.values())
    assert peft_model.base_model.model.lm_head is model.lm_head  # the output layer is not wrapped


def test_lora_config_is_new_on_every_call():
    first = lora_config(4, 8)
    get_peft_model(tiny_llama(), first)  # peft writes the resolved module names into the config it gets
    assert first.target_modules != "all-linear"
    assert lora_config(4, 8).target_modules == "all-linear"


# sft_config

def test_sft_config_on_the_cpu(tmp_path):
    args = sft_config(tmp_path / "run", torch.device("cpu"), max_steps=300, batch_size=16, learning_rate=2e-3, seed=7)
    assert args.output_dir == str(tmp_path / "run")
    assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate) == (300, 16, 2e-3)
    assert args.seed == args.data_seed == 7
    assert (args.bf16, args.fp16) == (False, False)  # trl's default is bf16=True
    assert args.gradient_checkpointing is False and args.dataloader_pin_memory is False
    assert args.optim == "adamw_torch" and args.lr_scheduler_type == "linear" and args.warmup_steps == 0.05
    assert args.completion_only_loss is True and args.disable_tqdm is False
    assert args.logging_steps == 10 and args.save_strategy == "no" and args.report_to == []


def test_sft_config_on_a_gpu_pages_adamw_and_checkpoints(tmp_path, monkeypatch):
    # no GPU needed: the device only decides the arguments (the precision flags would ask the GPU, so fix them)
    monkeypatch.setattr(utils.training, "mixed_precision_flags", lambda device: {"bf16": False, "fp16": False})
    args = sft_config(tmp_path, torch.device("cuda"), max_steps=10, batch_size=2, learning_rate=1e-4, seed=0)
    assert args.optim == "paged_adamw_32bit" and args.dataloader_pin_memory is True
    assert args.gradient_checkpointing is True and args.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_sft_config_logs_a_short_run_and_takes_overrides(tmp_path):
    cpu = torch.device("cpu")
    assert sft_config(tmp_path, cpu, max_steps=4, batch_size=2, learning_rate=1e-4, seed=0).logging_steps == 4
    args = sft_config(tmp_path, cpu, max_steps=8, batch_size=2, learning_rate=1e-4, seed=0, logging_steps=1,
                      lr_scheduler_type="constant_with_warmup", activation_checkpointing=True)
    assert args.logging_steps == 1 and args.lr_scheduler_type == "constant_with_warmup"
    assert args.gradient_checkpointing is True  # transformers 5's new name wins over trl's old one
    with pytest.raises(ValueError, match="max_steps"):
        sft_config(tmp_path, cpu, max_steps=0, batch_size=2, learning_rate=1e-4, seed=0)


# adapters_in_training_dtype

def adapted_model_in_bf16():
    """A LoRA model whose adapters are bf16, as SFTTrainer leaves a quantized model's, and whose base is fp16."""
    model = get_peft_model(tiny_llama().to(torch.float16), lora_config(4, 8), autocast_adapter_dtype=False)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    return model


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.float16, "fp32"])
def test_adapters_go_to_fp32_unless_compute_is_bf16(compute_dtype):
    model = adapted_model_in_bf16()
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert adapters_in_training_dtype(model, compute_dtype) == n_trainable > 0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.float16}  # the base is left alone
    assert adapters_in_training_dtype(model, compute_dtype) == 0  # already fp32: nothing to cast


def test_adapters_stay_bf16_when_compute_is_bf16():
    model = adapted_model_in_bf16()
    assert adapters_in_training_dtype(model, torch.bfloat16) == 0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}


def test_adapters_in_training_dtype_rejects_a_non_float_dtype():
    with pytest.raises(ValueError, match="compute_dtype"):
        adapters_in_training_dtype(tiny_llama(), torch.int8)
