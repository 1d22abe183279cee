"""Model and data loading: one parameter picks the model, and everything loads from local files by default."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
BUNDLED_MODEL = DATA / "kjv-llama"
TASK_DIR = DATA / "dates"
HELDOUT_TEXT = DATA / "lm_heldout.txt"
MODEL_ENV = "COURSE_MODEL"
HUB_HOST = "huggingface.co"


def model_name(name: str | os.PathLike | None = None) -> str:
    """The model the course uses: ``name`` if given, else ``$COURSE_MODEL``, else the bundled model."""
    if name:
        return str(name)
    return os.environ.get(MODEL_ENV) or str(BUNDLED_MODEL)


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (or anything that exists here) is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def _check_local_model(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(
            f"No folder {path}. Give a folder that holds a Hugging Face model (config.json and "
            f"*.safetensors), a hub id such as 'EleutherAI/gpt-neo-125m', or unset {MODEL_ENV} "
            f"to use the bundled model ({BUNDLED_MODEL}); `python data/build_model.py` rebuilds it."
        )
    missing = [what for what, ok in (
        ("config.json", (path / "config.json").is_file()),
        ("*.safetensors weights", any(path.glob("*.safetensors"))),
    ) if not ok]
    if missing:
        raise FileNotFoundError(
            f"{path} holds no model: it lacks {' and '.join(missing)}. Save one there with "
            f"model.save_pretrained(path) (safetensors only), or unset {MODEL_ENV} to use the bundled model."
        )


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _check_hub_model(repo_id: str) -> None:
    """Fail fast (instead of a minute of retries) when a hub id is neither cached nor reachable."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # cached: from_pretrained can work offline
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise ConnectionError(
            f"Cannot download {repo_id!r}: this machine cannot reach {HUB_HOST} and the model is not in "
            f"the Hugging Face cache. Use the bundled model (unset {MODEL_ENV}, or pass None), or "
            "download the model once on a machine with internet and copy the cache folder here."
        )


def keep_4bit_layers_trainable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit layers for CPU inference; return how many layers were set.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` on its first forward in
    ``eval()`` mode without gradients (bf16 block scales, double quantization dropped). The repacked
    layer has no backward, so a later fine-tune gets ``None`` gradients with only a warning.
    """
    n = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def nf4_config(compute_dtype: torch.dtype | str = torch.float32, *, double_quant: bool = True,
               storage: torch.dtype = torch.uint8):
    """QLoRA's quantization as a ``BitsAndBytesConfig``: NF4 weights with double quantization.

    The configuration notebook 06 builds and explains (Dettmers et al. 2023, QLoRA, §3: 4-bit NormalFloat,
    double quantization); the later notebooks take it from here.

    - ``compute_dtype``: what a 4-bit layer dequantizes to and computes in (fp32 on the CPU, bf16/fp16 on
      a GPU: :func:`utils.compute_dtype`).
    - ``double_quant``: quantize the blocks' absmax scales too (8 bits instead of 32).
    - ``storage``: the dtype the packed 4-bit values are stored in (``bnb_4bit_quant_storage``); FSDP1
      needs a float dtype (notebook 09).
    """
    from transformers import BitsAndBytesConfig

    from .device import dtype_from_name

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=dtype_from_name(compute_dtype), bnb_4bit_quant_storage=storage)


def load_model(
    name: str | os.PathLike | None = None,
    *,
    quantization_config: Any | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = None,
):
    """Load ``(model, tokenizer)`` with the ordinary ``from_pretrained`` calls.

    - ``name``: a local folder or a hub id; default ``$COURSE_MODEL`` or the bundled model.
    - ``quantization_config``: e.g. ``BitsAndBytesConfig(load_in_4bit=True, ...)`` (transformers 5
      removed the ``load_in_4bit=``/``load_in_8bit=`` keywords of ``from_pretrained``).
    - ``dtype``: the dtype of the weights that stay unquantized (transformers 5 renamed ``torch_dtype``).
    - ``device``: default CUDA when present, else CPU.

    Safetensors only, never ``trust_remote_code``. The tokenizer always has a pad token. Quantized
    4-bit layers stay trainable after an evaluation on the CPU (see ``keep_4bit_layers_trainable``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .device import dtype_from_name, get_device

    name = model_name(name)
    device = get_device(str(device) if device is not None else None)
    if _looks_like_path(name):
        _check_local_model(Path(name).expanduser())
    else:
        _check_hub_model(name)
    common = dict(trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(name, **common)
    if tokenizer.pad_token is None:  # e.g. GPT-2/GPT-Neo: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = dict(common, use_safetensors=True, dtype=dtype_from_name(dtype))
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    if quantization_config is None:
        model.to(device)
    else:
        keep_4bit_layers_trainable(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_task_dataset(data_dir: str | os.PathLike | None = None):
    """The fine-tuning task as a ``DatasetDict`` with ``train`` and ``test`` splits (prompt/completion columns)."""
    return load_json_splits(Path(data_dir or TASK_DIR), "data/build_dataset.py")


def load_json_splits(data_dir: Path, build_script: str):
    """``data_dir/{train,test}.jsonl`` as a ``DatasetDict``; a missing split names the script that rebuilds it."""
    from datasets import load_dataset

    files = {split: data_dir / f"{split}.jsonl" for split in ("train", "test")}
    for split, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(
                f"Missing {path} (the {split} split). Run `python {build_script}` to rebuild the data set."
            )
    return load_dataset("json", data_files={k: str(v) for k, v in files.items()})


def heldout_text() -> str:
    """The held-out King James text (every 25th chapter) that the bundled model never trained on."""
    if not HELDOUT_TEXT.is_file():
        raise FileNotFoundError(f"Missing {HELDOUT_TEXT}. Run `python data/build_model.py` to rebuild it.")
    return HELDOUT_TEXT.read_text(encoding="utf-8")
