"""The training-memory estimator: predicted against measured, formulas against the papers, bad input.

On the CPU the predicted peak of one training step is within ``CPU_TOLERANCE`` (1%) of the peak that
``utils.measure_training_step`` measures, on the bundled model and on three random-weight Llama
configurations of different sizes, for full fine-tuning, LoRA and QLoRA, with and without
checkpointing; weights, gradients and optimizer states are predicted exactly, saved activations to
``ACTIVATION_SLACK_BYTES`` (``utils/estimator/README.md`` states the same figures). The recipe options (trl's chunked loss, gradient accumulation, the bytes activation
offloading moves, ``prepare_model_for_kbit_training``'s upcast, 8-bit states) are checked the same way
within ``OPTION_TOLERANCE``. A GPU, when present, is checked against CUDA's peak statistics within
``GPU_TOLERANCE`` (10%: the CUDA rules are predictions until a GPU run checks them).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

import utils
from utils import estimator as E

CPU_TOLERANCE = 0.01  # the peak on the CPU, as utils/estimator/README.md states it
GPU_TOLERANCE = 0.10  # the peak against CUDA's statistics
ACTIVATION_SLACK_BYTES = 8  # exact but for one 8-byte tensor that the measurement finds with a batch of one sequence

SHAPES = {  # three sizes built from config with random weights (plus the bundled model below)
    "2-layer GQA, tied": E.ModelShape(layers=2, hidden=64, intermediate=172, heads=4, kv_heads=2, vocab=512,
                                      tied_embeddings=True),
    "4-layer MHA, untied": E.ModelShape(layers=4, hidden=128, intermediate=344, heads=4, kv_heads=4, vocab=1024,
                                        tied_embeddings=False),
    "6-layer GQA, tied": E.ModelShape(layers=6, hidden=192, intermediate=512, heads=6, kv_heads=2, vocab=2048,
                                      tied_embeddings=True),
}
TOKENS = {"2-layer GQA, tied": (2, 32), "4-layer MHA, untied": (2, 48), "6-layer GQA, tied": (1, 64),
          "bundled": (2, 32)}
METHODS = ["full", "lora", "qlora"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine two threads wait on each other per op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bundled_model(recipe: E.Recipe):
    """The bundled model with its trained weights, quantized to NF4 for QLoRA, prepared as ``recipe`` says."""
    quant = None
    if recipe.method == "qlora":
        quant = utils.nf4_config(torch.float32, double_quant=recipe.double_quant)
    model, _ = utils.load_model(quantization_config=quant, device="cpu")
    return E.prepare_for_training(model, recipe)


def check(predicted: E.Estimate, measured: utils.StepMemory) -> None:
    assert predicted.weights == measured.weights
    assert predicted.gradients == measured.gradients
    assert predicted.optimizer_states == measured.optimizer_states
    assert abs(predicted.activations - measured.activations) <= ACTIVATION_SLACK_BYTES
    error = (predicted.peak - measured.peak) / measured.peak
    assert abs(error) <= CPU_TOLERANCE, (
        f"{predicted.recipe.label()}: predicted {predicted.peak} B, measured {measured.peak} B ({error:+.1%})")


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(SHAPES) + ["bundled"])
def test_predicted_peak_matches_measured_on_cpu(name, method, checkpointing):
    utils.quiet()
    batch, seq = TOKENS[name]
    recipe = E.Recipe(method=method, checkpointing=checkpointing, batch_size=batch, seq_len=seq, device="cpu")
    if name == "bundled":
        model = bundled_model(recipe)
        shape = E.shape_from_config(model.config)
    else:
        shape = SHAPES[name]
        model = E.build_model(shape, recipe)
    check(E.estimate(shape, recipe), E.measure_recipe(model, recipe))


@pytest.mark.parametrize("recipe", [
    E.Recipe(method="full", optimizer="adamw8bit"),
    E.Recipe(method="full", precision="mixed", checkpointing=True),
    E.Recipe(method="lora", precision="bf16", lora_targets="all-linear", adapter_dtype="bf16"),
    E.Recipe(method="qlora", precision="mixed", optimizer="paged_adamw", lora_r=16, checkpointing=True),
    E.Recipe(method="qlora", double_quant=False, lora_targets=("k_proj", "up_proj")),
], ids=lambda r: r.label().replace(" ", "_"))
def test_other_recipes_on_cpu(recipe):
    utils.quiet()
    recipe = E.Recipe(**{**recipe.__dict__, "batch_size": 2, "seq_len": 32, "device": "cpu"})
    shape = SHAPES["2-layer GQA, tied"]
    check(E.estimate(shape, recipe), E.measure_recipe(E.build_model(shape, recipe), recipe))


# --- the recipe options: chunked loss, accumulation, offloading, prepare_model_for_kbit_training ----

OPTION_TOLERANCE = 0.01  # the new options' bar on the CPU: peak and saved activations within 1%, bytes offloaded too


@pytest.mark.parametrize("shape_name, fields", [
    ("2-layer GQA, tied", dict(method="full", chunked_loss=True)),
    ("2-layer GQA, tied", dict(method="lora", chunked_loss=True, batch_size=1)),
    ("4-layer MHA, untied", dict(method="qlora", chunked_loss=True, checkpointing=True)),
    ("4-layer MHA, untied", dict(method="full", chunked_loss=True, precision="mixed")),
    ("2-layer GQA, tied", dict(method="lora", chunked_loss=True, precision="bf16")),
    ("2-layer GQA, tied", dict(method="full", accumulation_steps=3)),
    ("4-layer MHA, untied", dict(method="lora", accumulation_steps=2, checkpointing=True)),
    ("4-layer MHA, untied", dict(method="qlora", accumulation_steps=2, chunked_loss=True)),
    ("2-layer GQA, tied", dict(method="qlora", precision="bf16", prepare_kbit=True)),
    ("4-layer MHA, untied", dict(method="qlora", precision="mixed", prepare_kbit=True, checkpointing=True)),
    ("2-layer GQA, tied", dict(method="full", offload_activations=True)),
    ("4-layer MHA, untied", dict(method="lora", offload_activations=True, checkpointing=True)),
    ("2-layer GQA, tied", dict(method="lora", optimizer="adamw8bit", lora_r=64, lora_targets="all-linear")),
    ("4-layer MHA, untied", dict(method="full", precision="bf16", optimizer="adamw8bit")),
    ("2-layer GQA, tied", dict(method="full", precision="bf16", optimizer="paged_adamw")),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()))
def test_recipe_options_match_measurement_on_cpu(shape_name, fields):
    """Each option predicted against the harness's measurement; offloading: the bytes trl's rules would move."""
    utils.quiet()
    recipe = E.Recipe(**{"batch_size": 2, "seq_len": 32, "device": "cpu", **fields})
    shape = SHAPES[shape_name]
    model = E.build_model(shape, recipe)
    predicted, measured = E.estimate(shape, recipe), E.measure_recipe(model, recipe)
    assert predicted.weights == measured.weights
    assert predicted.gradients == measured.gradients
    assert predicted.optimizer_states == measured.optimizer_states
    assert predicted.activations == pytest.approx(measured.activations, rel=OPTION_TOLERANCE)
    assert predicted.peak == pytest.approx(measured.peak, rel=OPTION_TOLERANCE), recipe.label()
    if recipe.offload_activations:
        assert predicted.offloaded == pytest.approx(E.measure_offloaded(model, recipe), rel=OPTION_TOLERANCE)
        assert predicted.peak == E.estimate(shape, recipe, offload_activations=False).peak  # CPU: nothing moves


def test_harness_runs_trls_chunked_loss():
    """The chunked recipe really goes through trl's fused head: same loss as the plain one, no logits."""
    recipe = E.Recipe(method="lora", batch_size=2, seq_len=16, device="cpu")
    shape = SHAPES["2-layer GQA, tied"]
    plain, chunked = E.build_model(shape, recipe), E.build_model(shape, E.Recipe(**{**recipe.__dict__, "chunked_loss": True}))
    ids = torch.randint(0, shape.vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    out = chunked(input_ids=ids, labels=ids, fused_lm_head=True)
    assert getattr(out, "logits", None) is None
    assert out.loss.item() == pytest.approx(plain(input_ids=ids, labels=ids).loss.item(), rel=1e-5)


def test_chunked_loss_tile_is_vocab_chunk_wide():
    """trl's tile buffer is 32768 words wide: below that vocabulary the chunked loss holds more, above it less."""
    small, big = SHAPES["2-layer GQA, tied"], E.common_shapes()["Llama-3.2-1B"]
    for shape, cheaper in ((small, False), (big, True)):
        plain = E.estimate(shape, method="lora", seq_len=1024, checkpointing=True)
        chunked = E.estimate(shape, method="lora", seq_len=1024, checkpointing=True, chunked_loss=True)
        assert (chunked.peak < plain.peak) is cheaper
    assert E.VOCAB_CHUNK == 32768 and E.TOKEN_CHUNK == 4096


def test_accumulation_peak_does_not_grow_with_micro_batches():
    shape = E.common_shapes()["Llama-2-7B"]
    peaks = {k: E.estimate(shape, method="qlora", precision="mixed", checkpointing=True, accumulation_steps=k).peak
             for k in (1, 2, 16)}
    assert peaks[2] == peaks[16] and peaks[1] <= peaks[2]
    one = E.estimate(shape, method="qlora", precision="mixed", checkpointing=True)
    assert peaks[2] - peaks[1] <= one.gradients  # at most the resident gradients


def test_offloading_lowers_the_gpu_peak_and_reports_host_bytes():
    shape = E.common_shapes()["Llama-2-7B"]
    fields = dict(method="qlora", precision="mixed", seq_len=4096, device="cuda")
    on, off = E.estimate(shape, offload_activations=True, **fields), E.estimate(shape, **fields)
    assert off.offloaded == 0 and 0.9 * on.activations < on.offloaded < on.activations
    assert on.peak < off.peak


def test_8bit_states_cost_2_bytes_plus_one_absmax_per_256():
    """bitsandbytes 8-bit AdamW: 2 uint8 moments + one fp32 absmax per 256 values each (fp32 below 4096 elements);
    the measured recipes above check the bytes against what bitsandbytes holds."""
    shape = E.common_shapes()["Llama-2-7B"]
    est = E.estimate(shape, method="full", precision="bf16", optimizer="adamw8bit")
    assert est.optimizer_states / shape.parameters() == pytest.approx(2 + 2 * 4 / 256, abs=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("method", METHODS)
def test_predicted_peak_matches_cuda_statistics(method, checkpointing):
    """On a GPU: against ``torch.cuda.max_memory_allocated`` (bf16 autocast, fused AdamW)."""
    utils.quiet()
    shape = SHAPES["6-layer GQA, tied"]
    recipe = E.Recipe(method=method, precision="mixed", checkpointing=checkpointing, batch_size=4, seq_len=128,
                      optimizer="adamw_fused", device="cuda")
    measured = E.measure_recipe(E.build_model(shape, recipe), recipe)
    predicted = E.estimate(shape, recipe)
    assert abs(predicted.peak - measured.peak) / measured.peak <= GPU_TOLERANCE


# --- formulas against papers and published configs ------------------------------------------------

def test_double_quantization_constants_match_the_qlora_paper():
    """QLoRA §3: constants cost 32/64 = 0.5 bits per weight, ≈ 0.127 bits with double quantization."""
    n = 8192 * 8192
    bits = lambda dq: (E.nf4_bytes(n, dq) - n / 2) * 8 / n  # noqa: E731
    assert bits(False) == pytest.approx(0.5, abs=1e-3)
    assert bits(True) == pytest.approx(8 / 64 + 32 / (64 * 256), abs=1e-3)


def test_published_configs_give_the_known_parameter_counts():
    shapes = E.common_shapes()
    billions = {name: s.parameters() / 1e9 for name, s in shapes.items()}
    assert billions == pytest.approx({"Llama-3.2-1B": 1.236, "Llama-3.2-3B": 3.213, "Llama-2-7B": 6.738,
                                      "Llama-2-13B": 13.016, "LLaMA-65B": 65.286, "Llama-2-70B": 68.977}, abs=1e-3)
    assert all(s.source for s in shapes.values())


def test_adam_costs_16_bytes_per_parameter_in_fp32():
    shape = E.common_shapes()["Llama-2-7B"]
    est = E.estimate(shape, method="full", optimizer="adamw_fused", checkpointing=True)
    static = est.weights + est.gradients + est.optimizer_states
    assert static / shape.parameters() == pytest.approx(16, abs=1e-3)


def test_lora_and_qlora_shrink_the_static_memory():
    shape = E.common_shapes()["Llama-2-7B"]
    full = E.estimate(shape, method="full", precision="mixed", checkpointing=True)
    lora = E.estimate(shape, method="lora", precision="mixed", checkpointing=True)
    qlora = E.estimate(shape, method="qlora", precision="mixed", checkpointing=True)
    assert full.peak > 4 * lora.peak and lora.weights > 3 * qlora.weights
    assert lora.trainable_parameters < shape.parameters() / 1000


def test_config_forms_agree():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(utils.BUNDLED_MODEL)
    from_file = E.load_shape(utils.BUNDLED_MODEL / "config.json")
    assert E.shape_from_config(config) == E.shape_from_config(config.to_dict()) == E.ModelShape(
        **{k: getattr(from_file, k) for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab",
                                               "tied_embeddings", "head_dim")})


def test_estimate_accepts_fields_and_gives_a_verdict():
    shape = E.common_shapes()["Llama-2-7B"]  # r=64: every state large enough to be paged (the test below)
    est = E.estimate(shape, method="qlora", lora_r=64, optimizer="paged_adamw", device="cuda")
    assert est.pageable > 0 and est.overhead == E.CUDA_OVERHEAD_BYTES and est.total == est.peak + est.overhead
    assert est.verdict(est.total) == "fits"
    assert est.verdict(est.total - est.pageable) == "fits if paged states spill to CPU"
    assert est.verdict(est.total - est.pageable - 1) == "does not fit"
    assert sum(est.peak_parts.values()) == est.peak


# --- bad input gives clear errors ------------------------------------------------------------------

def test_missing_config_field_is_named():
    config = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100,
              "tie_word_embeddings": True}
    with pytest.raises(ValueError, match="intermediate_size"):
        E.estimate(config, E.Recipe())


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No config file"):
        E.load_shape(tmp_path / "nope.json")
    path = tmp_path / "biased.json"
    path.write_text(json.dumps({"num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 8,
                                "num_attention_heads": 2, "vocab_size": 10, "tie_word_embeddings": False,
                                "attention_bias": True}))
    assert E.load_shape(path).biases == ("q_proj", "k_proj", "v_proj", "o_proj")  # Llama's attention_bias
    path.write_text(json.dumps({"num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 8,
                                "num_attention_heads": 2, "vocab_size": 10, "tie_word_embeddings": False,
                                "biases": ["qkv"]}))
    with pytest.raises(ValueError, match="biases names \\['qkv'\\]"):
        E.load_shape(path)


@pytest.mark.parametrize("fields, message", [
    ({"batch_size": -1}, "batch_size must be a positive integer"),
    ({"seq_len": 0}, "seq_len must be a positive integer"),
    ({"lora_r": 0}, "lora_r must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
    ({"method": "prefix-tuning"}, "Unknown method 'prefix-tuning'. Use one of: full, lora, qlora"),
    ({"precision": "int8"}, "Unknown precision"),
    ({"optimizer": "sgd"}, "Unknown optimizer"),
    ({"device": "tpu"}, "Unknown device"),
    ({"lora_targets": ("query",)}, "Unknown LoRA target"),
    ({"checkpointing": "yes"}, "checkpointing must be True or False"),
    ({"accumulation_steps": 0}, "accumulation_steps must be a positive integer"),
    ({"chunked_loss": "yes"}, "chunked_loss must be True or False"),
    ({"offload_activations": 1}, "offload_activations must be True or False"),
    ({"prepare_kbit": True, "method": "lora"}, "prepare_kbit applies to method='qlora'"),
    ({"chunked_loss": True, "seq_len": 1}, "needs seq_len >= 2"),
])
def test_bad_recipe_fields_raise_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        E.Recipe(**fields)


def test_bad_shapes_and_recipe_types():
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        E.ModelShape(layers=1, hidden=64, intermediate=128, heads=4, kv_heads=3, vocab=10, tied_embeddings=True)
    with pytest.raises(ValueError, match="layers must be a positive integer"):
        E.ModelShape(layers=-2, hidden=64, intermediate=128, heads=4, kv_heads=4, vocab=10, tied_embeddings=True)
    with pytest.raises(TypeError, match="Recipe"):
        E.estimate(SHAPES["2-layer GQA, tied"], "qlora")


def test_recipe_defaults_resolve_targets():
    assert E.Recipe(method="lora").lora_targets == E.PEFT_DEFAULT_TARGETS
    assert E.Recipe(method="lora", lora_targets="all-linear").lora_targets == E.LINEAR_NAMES
    assert E.Recipe(lora_targets=["v_proj", "q_proj"]).lora_targets == ("q_proj", "v_proj")
    assert math.isclose(E.GPUS["A100 80 GB"] / E.GiB, 80)


def test_llama_like_configs_are_read_and_others_refused_by_name():
    from transformers import GPT2Config, GPTNeoConfig, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    small = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)
    for cls, biases in ((MistralConfig, ()), (Qwen2Config, ("q_proj", "k_proj", "v_proj"))):
        shape = E.shape_from_config(cls(**small))
        assert (shape.layers, shape.hidden, shape.kv_heads, shape.biases) == (2, 64, 2, biases)
    assert E.shape_from_config(LlamaConfig(**small, attention_bias=True, mlp_bias=True)).biases == E.LINEAR_NAMES
    for config, name in ((GPT2Config(), "gpt2"), (GPTNeoConfig(), "gpt_neo"), (OPTConfig(), "opt")):
        with pytest.raises(ValueError, match=f"not '{name}'.*does not model .*biases"):
            E.shape_from_config(config)
    with pytest.raises(ValueError, match="not 'falcon'.*does not model its layers"):
        E.shape_from_config({"model_type": "falcon", **small})
    with pytest.raises(ValueError, match="biases names \\['qkv'\\]: choose from q_proj"):
        E.ModelShape(layers=1, hidden=64, intermediate=128, heads=4, kv_heads=4, vocab=10, tied_embeddings=True,
                     biases=("qkv",))


ACCEPTED_CONFIGS = {  # every model type the estimator accepts, small, with the biases each can have
    "llama": dict(),
    "llama+biases": dict(attention_bias=True, mlp_bias=True),
    "mistral": dict(),
    "qwen2": dict(),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", list(ACCEPTED_CONFIGS))
def test_every_accepted_model_type_is_counted_as_built(kind, method):
    """An accepted type is a counted type: weights, gradients and states to the byte, the peak within 1%."""
    from transformers import AutoConfig, AutoModelForCausalLM

    utils.quiet()
    config = AutoConfig.for_model(kind.split("+")[0], vocab_size=512, hidden_size=64, intermediate_size=172,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  tie_word_embeddings=True, use_cache=False, pad_token_id=0, bos_token_id=0,
                                  eos_token_id=0, **ACCEPTED_CONFIGS[kind])
    shape = E.shape_from_config(config)
    recipe = E.Recipe(method=method, batch_size=2, seq_len=32, device="cpu", lora_targets="all-linear",
                      prepare_kbit=method == "qlora")
    assert shape.parameters() == sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    model = E.build_model(shape, recipe, config=config)
    assert model.config.model_type == config.model_type
    check(E.estimate(shape, recipe), E.measure_recipe(model, recipe))


def test_paged_optimizers_page_only_the_states_of_large_parameters():
    import inspect

    import bitsandbytes as bnb

    # the threshold, as the pinned bitsandbytes writes it (a CPU cannot page: it falls back to ordinary tensors)
    assert "p.numel() < 1e5" in inspect.getsource(bnb.optim.optimizer.Optimizer8bit.get_state_buffer)
    llama7 = E.common_shapes()["Llama-2-7B"]
    qlora = dict(method="qlora", precision="mixed", lora_targets="all-linear", device="cuda")
    r8 = E.estimate(llama7, **qlora, lora_r=8, optimizer="paged_adamw")
    assert r8.optimizer_states > 0 and r8.pageable == 0  # A and B: 8 x 4096 or 8 x 11008 elements, all < 1e5
    r64 = E.estimate(llama7, **qlora, lora_r=64, optimizer="paged_adamw")
    assert r64.pageable == r64.optimizer_states  # 64 x 4096 = 262,144 elements and more: every state paged
    assert E.estimate(llama7, **qlora, lora_r=64, optimizer="adamw_fused").pageable == 0
    full8 = E.estimate(llama7, method="full", precision="bf16", optimizer="paged_adamw8bit", device="cuda")
    big = sum(o * n for o, n in llama7.linear_shapes().values()) * llama7.layers + llama7.vocab * llama7.hidden * 2
    assert full8.pageable == 2 * big  # uint8 states of the linear layers, embedding and head; norms and absmax unpaged
