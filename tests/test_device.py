import pytest
import torch

from utils import device as d


def test_cpu_computes_in_fp32():
    assert d.compute_dtype(torch.device("cpu")) is torch.float32
    assert d.mixed_precision_flags(torch.device("cpu")) == {"bf16": False, "fp16": False}


@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                   ((8, 9), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_gpu_dtype_follows_compute_capability(monkeypatch, capability, expected):
    # A T4 (7.5) may claim bf16 support through emulation: the choice must go by capability.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert d.compute_dtype(torch.device("cuda")) is expected
    assert d.native_bf16(capability) is (expected is torch.bfloat16)
    assert d.mixed_precision_flags(torch.device("cuda")) == {"bf16": expected is torch.bfloat16,
                                                            "fp16": expected is torch.float16}


def test_get_device_defaults_to_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert d.get_device().type == "cpu"


def test_asking_for_cuda_without_gpu_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU.*get_device()"):
        d.get_device("cuda")


@pytest.mark.parametrize("name, dtype", [("fp32", torch.float32), ("BF16", torch.bfloat16), ("float16", torch.float16),
                                         (torch.float16, torch.float16)])
def test_dtype_names(name, dtype):
    assert d.dtype_from_name(name) is dtype


def test_unknown_dtype_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown dtype name 'fp8'.*bf16.*fp32"):
        d.dtype_from_name("fp8")
