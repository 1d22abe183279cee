"""The memory helpers against sizes computed by hand."""
import pytest
import torch
from torch import nn

from utils import memory as m

B, D, H = 8, 16, 32  # batch, input width, hidden width


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, D))


def n_params() -> int:
    return D * H + H + H * D + D


def test_static_bytes_follow_the_formulas():
    model = mlp()
    assert m.parameter_bytes(model) == 4 * n_params()
    assert m.parameter_bytes(model.half()) == 2 * n_params()


def test_tied_weights_are_counted_once():
    a, b = nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False)
    b.weight = a.weight
    assert m.parameter_bytes(nn.Sequential(a, b)) == 4 * D * D


def test_trainable_only_skips_frozen_parameters():
    model = mlp()
    model[0].requires_grad_(False)
    assert m.parameter_bytes(model, trainable_only=True) == 4 * (H * D + D)


def test_gradients_and_adam_states():
    model = mlp()
    opt = torch.optim.AdamW(model.parameters())
    assert m.gradient_bytes(model) == 0 and m.optimizer_state_bytes(opt) == 0
    model(torch.randn(B, D)).sum().backward()
    assert m.gradient_bytes(model) == 4 * n_params()
    opt.step()
    # exp_avg and exp_avg_sq: 8 bytes per parameter, plus a 4-byte fp32 `step` per parameter tensor
    assert m.optimizer_state_bytes(opt) == 8 * n_params() + 4 * 4


def test_saved_activations_of_an_mlp():
    model = mlp()
    x = torch.randn(B, D)
    with m.count_saved_tensors(model) as saved:
        model(x).sum()
    # Linear 1 saves its input x, ReLU saves its output (which Linear 2 saves again: same storage).
    assert saved.bytes == 4 * (B * D + B * H)
    assert saved.tensors == 2


def test_nothing_is_saved_under_no_grad():
    model = mlp()
    with torch.no_grad(), m.count_saved_tensors(model) as saved:
        model(torch.randn(B, D))
    assert saved.bytes == 0


def test_checkpointed_region_saves_only_its_input():
    from torch.utils.checkpoint import checkpoint

    model = mlp()
    x = torch.randn(B, D, requires_grad=True)
    with m.count_saved_tensors(model) as saved:
        checkpoint(model, x, use_reentrant=False).sum()
    assert saved.bytes < 4 * (B * D + B * H)


def test_trace_memory_sees_allocations_and_frees():
    def work():
        a = torch.ones(1000, 250)  # 1,000,000 bytes
        b = a * 2                  # another 1,000,000
        del a
        return b.sum()

    _, trace = m.trace_memory(work, baseline=123)
    assert trace.baseline == 123
    assert trace.peak - trace.baseline >= 2_000_000
    assert trace.peak - trace.baseline < 2_100_000
    assert trace.bytes[0] == 123 and len(trace.bytes) == len(trace.times_ms)


def test_training_step_breakdown_and_peak():
    model = mlp()
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(B, D)
    s = m.measure_training_step(model, x, opt, forward=lambda mod, b: mod(b).pow(2).mean())
    assert s.weights == 4 * n_params()
    assert s.gradients == 4 * n_params()
    assert s.optimizer_states == 8 * n_params() + 16
    assert s.activations == 4 * (B * D + B * H + B * D)  # x, ReLU output, model output (pow saves it)
    # At the end of the step weights, gradients and states are all held: the peak is at least that.
    assert s.peak >= s.weights + s.gradients + s.optimizer_states
    assert set(s.trace.phases) == {"forward", "backward", "optimizer"}
    assert s.breakdown()["activations"] == s.activations


def test_warmup_step_makes_the_measured_step_a_steady_state_one():
    x = torch.randn(B, D)
    loss = lambda mod, b: mod(b).pow(2).mean()  # noqa: E731
    first, by_hand = mlp(), mlp()
    opt_first, opt_by_hand = torch.optim.AdamW(first.parameters()), torch.optim.AdamW(by_hand.parameters())
    cold = m.measure_training_step(first, x, opt_first, forward=loss)
    m.measure_training_step(by_hand, x, opt_by_hand, forward=loss)
    second = m.measure_training_step(by_hand, x, opt_by_hand, forward=loss)
    model = mlp()
    opt = torch.optim.AdamW(model.parameters())
    warm = m.measure_training_step(model, x, opt, forward=loss, warmup_steps=1)
    states = 8 * n_params() + 16
    assert cold.trace.baseline == 4 * n_params()  # AdamW's states appear during the first step
    assert warm.trace.baseline == 4 * n_params() + states  # ... and are held before the measured one
    assert (warm.peak, warm.breakdown()) == (second.peak, second.breakdown())
    torch.testing.assert_close(list(model.parameters()), list(by_hand.parameters()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        m.measure_training_step(model, x, opt, forward=loss, warmup_steps=-1)


def test_accumulated_step_over_micro_batches():
    """``batches=``: one forward/backward per micro-batch (loss divided by their number), one optimizer step;
    the gradients equal those of one step on the whole batch, and the activations are one micro-batch's."""
    x = torch.randn(B, D)
    loss = lambda mod, b: mod(b).pow(2).mean()  # noqa: E731
    whole, split = mlp(), mlp()
    m.measure_training_step(whole, x, forward=loss)
    s = m.measure_training_step(split, forward=loss, batches=[c.clone() for c in x.chunk(4)])  # (a view would count x whole)
    for a, b in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    assert s.activations == 4 * (B // 4) * (D + H + D)
    assert {"forward 1", "backward 4"} <= set(s.trace.phases)
    for bad in (dict(), dict(batch=x, batches=[x]), dict(batches=[])):
        with pytest.raises(ValueError, match="batch"):
            m.measure_training_step(mlp(), forward=loss, **bad)


def test_training_step_needs_a_scalar_loss():
    with pytest.raises(ValueError, match="scalar loss"):
        m.measure_training_step(mlp(), torch.randn(B, D))


@pytest.mark.parametrize("n, text", [(512, "512 B"), (2048, "2.0 KiB"), (3 * 2**20, "3.0 MiB"), (5 * 2**30, "5.0 GiB")])
def test_format_bytes(n, text):
    assert m.format_bytes(n) == text


def test_int8_row_scales_are_counted_before_and_after_the_first_forward():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    fp = nn.Linear(64, 32)
    q = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False, threshold=6.0)
    q.load_state_dict(fp.state_dict())
    q = q.to("cpu")
    expected = 64 * 32 * 1 + 32 * 4 + 32 * 4  # int8 weight, fp32 bias, one fp32 scale per output row
    assert m.parameter_bytes(q) == expected
    q.eval()
    with torch.no_grad():
        q(torch.randn(4, 64))
    assert m.parameter_bytes(q) == expected


@pytest.fixture
def one_rank_group():
    """A gloo process group of one rank (this process) and its device mesh, torn down after the test."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.fail("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_a_dtensor_counts_its_local_shard(one_rank_group):
    from torch.distributed.tensor import DTensor, Shard

    # What rank 0 of two holds of a [2 * H, D] weight split by rows (FSDP2's Shard(0)): the first H rows.
    local = torch.randn(H, D)
    weight = DTensor.from_local(local, one_rank_group, [Shard(0)], run_check=False, shape=(2 * H, D),
                                stride=(D, 1))
    assert weight.shape == (2 * H, D) and m.tensor_bytes(weight) == 4 * 2 * H * D  # the global tensor
    assert m.to_local(weight) is not weight and m.to_local(local) is local
    assert m.unique_bytes([weight]) == 4 * H * D  # the shard this rank holds
    assert m.unique_bytes([weight, local]) == 4 * H * D  # the same storage, counted once
    layer = nn.Linear(D, 2 * H, bias=False)
    layer.weight = nn.Parameter(weight)
    layer.weight.grad = DTensor.from_local(torch.zeros(H, D), one_rank_group, [Shard(0)], run_check=False,
                                           shape=(2 * H, D), stride=(D, 1))
    assert m.parameter_bytes(layer) == m.gradient_bytes(layer) == 4 * H * D


def test_quant_constants_of_4bit_layers():
    import bitsandbytes as bnb

    assert m.quant_constant_bytes(mlp()) == 0
    torch.manual_seed(0)
    q = bnb.nn.Linear4bit(64, 32, bias=False, compress_statistics=True, quant_type="nf4").to("cpu")
    constants = m.quant_constant_bytes(q)
    # found on the layer's quant_state; parameter_bytes finds the same tensors on the weight's
    assert constants > 0 and constants == m.parameter_bytes(q) - m.unique_bytes(q.parameters())
    assert m.unique_bytes(q.parameters()) == 64 * 32 // 2  # two 4-bit values per byte

# ---- CUDA: the rule for what a peak counts, checked against a stand-in for torch.cuda's statistics ----

class FakeCudaAllocator:
    """torch.cuda's memory statistics without a GPU: ``allocated`` bytes now, ``peak`` since the last reset."""

    def __init__(self, monkeypatch, allocated: int):
        self.allocated = self.peak = allocated
        self.resets = 0
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: self._reset())
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)

    def _reset(self) -> None:
        self.resets += 1
        self.peak = self.allocated

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n


MODEL_BYTES, OTHER_MODEL = 1_000_000, 7_000_000


@pytest.mark.parametrize("other", [0, OTHER_MODEL], ids=["alone on the GPU", "another model on the GPU"])
def test_cuda_peak_is_the_baseline_plus_the_rise_whatever_else_is_on_the_device(monkeypatch, other):
    gpu = FakeCudaAllocator(monkeypatch, allocated=MODEL_BYTES + other)

    def step():
        gpu.alloc(3000)  # activations
        gpu.alloc(2000)  # a transient buffer: the peak is here, 5000 above the start
        gpu.free(4000)

    _, trace = m.trace_memory(step, "cuda", baseline=MODEL_BYTES)
    assert gpu.resets == 1
    assert trace.peak == MODEL_BYTES + 5000  # not MODEL_BYTES + other + 5000, as with memory_allocated() as baseline
    assert trace.peak_above_baseline == 5000 and trace.baseline == MODEL_BYTES
    assert trace.other_bytes == other
    assert trace.source == "torch.cuda.max_memory_allocated"


def test_cuda_without_a_baseline_reports_only_the_rise_as_on_the_cpu(monkeypatch):
    gpu = FakeCudaAllocator(monkeypatch, allocated=OTHER_MODEL)
    _, trace = m.trace_memory(lambda: gpu.alloc(1234), "cuda")
    assert (trace.baseline, trace.peak, trace.other_bytes) == (0, 1234, OTHER_MODEL)
    _, cpu = m.trace_memory(lambda: torch.ones(1000))
    assert cpu.baseline == 0 and cpu.other_bytes is None  # the CPU keeps no account of what else is alive


def test_cuda_baseline_larger_than_the_device_holds_warns(monkeypatch):
    FakeCudaAllocator(monkeypatch, allocated=100)
    with pytest.warns(UserWarning, match="part of what the baseline counts is elsewhere"):
        _, trace = m.trace_memory(lambda: None, "cuda", baseline=1000)
    assert trace.peak == 1000 and trace.other_bytes == -900


def test_cuda_training_step_counts_the_model_not_the_other_models(monkeypatch):
    """measure_training_step on a (fake) GPU: the breakdown and the peak do not move with other tensors."""
    monkeypatch.setattr(m, "_model_device", lambda model: torch.device("cuda"))
    weights, states, activations = 4 * n_params(), 8 * n_params() + 16, 4 * (B * D + B * H + B * D)
    results = {}
    for other in (0, OTHER_MODEL):
        model, x = mlp(), torch.randn(B, D)
        opt = torch.optim.AdamW(model.parameters())
        # On the device when the measured step starts: the model's weights and AdamW states (from the
        # warm-up step), the other model, the batch.
        gpu = FakeCudaAllocator(monkeypatch, allocated=weights + states + other + 4 * x.numel())
        calls = []

        def forward(mod, b, gpu=gpu, calls=calls):
            calls.append(1)
            if len(calls) == 2:  # the measured step (the first call is the warm-up)
                gpu.alloc(activations)
                gpu.alloc(weights)  # the gradients: held at the end of the step, with everything else
            return mod(b).pow(2).mean()

        s = m.measure_training_step(model, x, opt, forward=forward, warmup_steps=1)
        assert len(calls) == 2 and gpu.resets == 1
        assert s.trace.baseline == weights + states == s.weights + s.optimizer_states
        assert s.other_bytes == other + 4 * x.numel()  # the other model and the batch, reported apart
        assert s.peak == s.weights + s.optimizer_states + activations + s.gradients
        results[other] = (s.peak, s.breakdown())
    assert results[0] == results[OTHER_MODEL]


def test_cpu_training_step_reports_no_other_bytes():
    s = m.measure_training_step(mlp(), torch.randn(B, D), forward=lambda mod, b: mod(b).pow(2).mean())
    assert s.other_bytes is None
