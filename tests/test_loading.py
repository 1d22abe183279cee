"""Loading from local folders, the COURSE_MODEL override, and clear errors for bad input."""
import pytest
import torch

from utils import loading


def test_model_name_precedence(monkeypatch):
    monkeypatch.delenv(loading.MODEL_ENV, raising=False)
    assert loading.model_name() == str(loading.BUNDLED_MODEL)
    monkeypatch.setenv(loading.MODEL_ENV, "/some/where")
    assert loading.model_name() == "/some/where"
    assert loading.model_name("org/model") == "org/model"


def test_bundled_model_loads_with_the_real_architecture():
    model, tok = loading.load_model(loading.BUNDLED_MODEL)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.num_hidden_layers >= 8 and cfg.hidden_size >= 256
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    assert next(model.parameters()).dtype is torch.float32
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    weights = loading.BUNDLED_MODEL / "model.safetensors"
    assert weights.stat().st_size <= 50 * 2**20


def test_course_model_env_picks_another_folder(monkeypatch, tiny_model_dir):
    monkeypatch.setenv(loading.MODEL_ENV, str(tiny_model_dir))
    model, tok = loading.load_model()
    assert model.config.num_hidden_layers == 2
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_dtype_is_applied(tiny_model_dir):
    model, _ = loading.load_model(tiny_model_dir, dtype="fp16")
    assert next(model.parameters()).dtype is torch.float16


def test_4bit_quantization_config(tiny_model_dir):
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    assert loading.nf4_config(torch.float32).to_dict() == cfg.to_dict()  # QLoRA's set-up, written out once
    model, _ = loading.load_model(tiny_model_dir, quantization_config=loading.nf4_config("fp32"))
    down = model.model.layers[0].mlp.down_proj
    assert isinstance(down, bnb.nn.Linear4bit) and down.weight.dtype == torch.uint8
    assert down.weight.quant_state.quant_type == "nf4" and down.weight.quant_state.nested  # double quantization


def test_nf4_config_options(tiny_model_dir):
    import bitsandbytes as bnb

    cfg = loading.nf4_config(torch.bfloat16, double_quant=False, storage=torch.float32)
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16 and not cfg.bnb_4bit_use_double_quant
    model, _ = loading.load_model(tiny_model_dir, quantization_config=loading.nf4_config(double_quant=False, storage=torch.float32))
    down = model.model.layers[0].mlp.down_proj
    assert isinstance(down, bnb.nn.Linear4bit) and down.weight.dtype == torch.float32  # packed values in fp32 words
    assert not down.weight.quant_state.nested
    with pytest.raises(ValueError, match="Unknown dtype name"):
        loading.nf4_config("fp33")


def test_4bit_layers_stay_trainable_after_a_cpu_evaluation(tiny_model_dir):
    """An eval-mode, no-grad forward (e.g. scoring before training) must not break the backward later."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model, _ = loading.load_model(tiny_model_dir, quantization_config=cfg, device="cpu")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    ids = torch.tensor([[1, 2, 3, 4]])
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    model.train()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds).logits.sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folder .*bundled model"):
        loading.load_model(tmp_path / "nope")


def test_folder_without_model_says_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds no model: it lacks \\*.safetensors"):
        loading.load_model(tmp_path)


def test_hub_id_without_network_fails_fast_with_advice(monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ConnectionError, match="cannot reach huggingface.co.*bundled model"):
        loading.load_model("EleutherAI/gpt-neo-125m")


def test_task_dataset_splits():
    ds = loading.load_task_dataset()
    assert ds["train"].num_rows == 2000 and ds["test"].num_rows == 200
    assert ds["train"].column_names == ["prompt", "completion"]
    # no held-out date is trained on
    assert not set(ds["train"]["prompt"]) & set(ds["test"]["prompt"])


def test_missing_data_file_says_how_to_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_dataset.py"):
        loading.load_task_dataset(tmp_path)


def test_heldout_text_is_not_in_training():
    text = loading.heldout_text()
    assert len(text) > 100_000 and text.endswith("\n")
