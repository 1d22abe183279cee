"""One training step of the course model on every rank that torchrun starts: DDP, FSDP2, LoRA and QLoRA under FSDP.

Notebook 09 launches it with ``utils.torchrun`` and imports it for its single-process reference. By hand, from
the course's folder (every setting optional; the defaults: the course model, the FSDP2 run ``full``, 4 x 64 tokens)::

    torchrun --standalone --nproc-per-node=2 notebooks/scripts/fsdp_step.py [SETTINGS.json]

``SETTINGS.json`` overrides :data:`DEFAULTS`, e.g. ``{"runs": ["ddp", "full", "qlora"]}``. Each rank takes its
share of the batch, runs one forward, backward and AdamW step per run and measures what it holds after it, then
the most it holds during a later step; rank 0 writes every rank's numbers to ``<out>/world<N>.json`` and the
full gradients of the ``ddp`` and ``full`` runs to ``<out>/world<N>_<run>_grads.pt``.
"""
from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from torch.nn.parallel import DistributedDataParallel

COURSE = Path(__file__).resolve().parents[2]
if str(COURSE) not in sys.path:  # launched by torchrun, only this script's folder is on the path
    sys.path.insert(0, str(COURSE))
import utils  # noqa: E402  (the course's package, importable once the course is on the path)

MODELS = ("full", "lora", "qlora", "qlora-fp32")  # fp32; + LoRA; + LoRA on NF4 stored in uint8 / in float32
RUNS = ("ddp", *MODELS, *(f"{m}/fsdp1" for m in MODELS))  # a model alone: FSDP2; "/fsdp1": the older FSDP
DEFAULTS = {
    "model": None,  # None: $COURSE_MODEL, else the bundled model (utils.model_name)
    "runs": ["full"],
    "seed": 0,
    "lora_r": 8,
    "lr": 1e-3,
    "batch": 4,  # sequences in the global batch, split evenly over the ranks
    "seq_len": 64,
    "collective_timeout_s": 150,
    "out": "outputs/09_sharding_fsdp",
    "peaks": True,  # also measure each DDP and FSDP2 run's peak in a later step (two more steps, one traced)
    "fail_rank": None,  # a rank that raises on purpose before any collective (notebook 09 shows the error)
}


def read_settings(path: str | None) -> dict:
    """:data:`DEFAULTS`, overridden by the JSON file at ``path`` (if given); unknown keys and runs are refused."""
    given = json.loads(Path(path).read_text()) if path else {}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown settings {sorted(unknown)} in {path}: use {sorted(DEFAULTS)}.")
    settings = {**DEFAULTS, **given}
    wrong = [run for run in settings["runs"] if run not in RUNS]
    if wrong:
        raise ValueError(f"Unknown runs {wrong}: choose from {list(RUNS)}.")
    return settings


def token_batch(tokenizer, batch: int, seq_len: int) -> torch.Tensor:
    """The same batch on every rank and in the notebook: the first batch x seq_len tokens of held-out text."""
    ids = tokenizer(utils.heldout_text()[:200_000], return_tensors="pt").input_ids[0]
    return ids[: batch * seq_len].reshape(batch, seq_len)


def build(run: str, settings: dict):
    """The model of a run and its tokenizer, built the same way on every rank (same seed: same LoRA initialisation)."""
    from peft import LoraConfig, get_peft_model

    utils.seed_everything(settings["seed"])
    quant = None
    if run.startswith("qlora"):  # "qlora": storage uint8 (the default), "qlora-fp32": 4-bit values packed in fp32
        storage = {"qlora": torch.uint8, "qlora-fp32": torch.float32}[run.split("/")[0]]
        quant = utils.nf4_config(torch.float32, storage=storage)  # notebook 06's NF4, double quantization
    model, tokenizer = utils.load_model(settings["model"], quantization_config=quant, dtype=torch.float32,
                                        device="cpu")
    if run.startswith(("lora", "qlora")):
        model = get_peft_model(model, LoraConfig(r=settings["lora_r"], lora_alpha=2 * settings["lora_r"],
                                                 lora_dropout=0.0, target_modules="all-linear"))
    # Dropout off (eval mode; gradients flow as in train mode): a random mask per rank would differ from the
    # mask of one process, and we want to compare the two exactly.
    model.eval()
    return model, tokenizer


def train_step(model: torch.nn.Module, ids: torch.Tensor, lr: float):
    """Forward, backward and one AdamW step on this rank's micro-batch; returns the optimizer and the loss."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    return optimizer, loss.detach()


def steady_step_peak(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
                     set_to_none: bool = True) -> int:
    """The most bytes this rank holds during the third step, as in every later one: the weights, AdamW's states
    (created during the first step), the gradients if ``set_to_none`` is False, and what the step allocates,
    traced by ``utils.trace_memory`` (on a CPU, the profiler's allocation events: FSDP's all-gathered layers
    too). The second step runs untraced: DDP rebuilds its gradient buckets in it, once."""
    def step():
        optimizer.zero_grad(set_to_none=set_to_none)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()

    step()
    optimizer.zero_grad(set_to_none=set_to_none)  # before the trace: what it frees was never traced
    held = utils.parameter_bytes(model) + utils.gradient_bytes(model) + utils.optimizer_state_bytes(optimizer)
    return utils.trace_memory(step, baseline=held)[1].peak


def mean_over_ranks(model: torch.nn.Module, ids: torch.Tensor, loss: torch.Tensor) -> list[float]:
    """The loss of the step and the loss after it, averaged over the ranks (as many tokens on every rank:
    the mean of the ranks' means is the mean over the whole batch)."""
    with torch.no_grad():
        after = model(input_ids=ids, labels=ids).loss
    losses = torch.stack([loss, after])
    dist.all_reduce(losses)
    return (losses / dist.get_world_size()).tolist()


def ddp_run(model: torch.nn.Module, ids: torch.Tensor, lr: float, peak: bool = True):
    """Data parallel: a full replica per rank, gradients all-reduced (averaged) during backward.

    Returns what this rank holds after the step and at the peak of a later step (if ``peak``), the gradients and
    the losses before and after the first step."""
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True)
    optimizer, loss = train_step(ddp, ids, lr)
    held = dict(params=utils.parameter_bytes(model), grads=utils.gradient_bytes(model),
                states=utils.optimizer_state_bytes(optimizer))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    losses = mean_over_ranks(ddp, ids, loss)
    # the .grad are views into DDP's gradient buckets, allocated once when it wrapped the model: zeroed in place
    if peak:
        held["peak"] = steady_step_peak(ddp, optimizer, ids, set_to_none=False)
    return held, grads, losses


def fsdp2_run(model: torch.nn.Module, ids: torch.Tensor, lr: float, peak: bool = True):
    """FSDP2 (ZeRO-3): every decoder layer a unit, then the root (embeddings, final norm, output head).

    Returns what this rank holds after the step and at the peak of a later step (if ``peak``), the full gradients
    and the losses before and after the first step."""
    for layer in utils.decoder_layers(model):
        fully_shard(layer)  # its parameters become DTensors: rows split across the ranks
    fully_shard(model)
    optimizer, loss = train_step(model, ids, lr)
    # every parameter, gradient and state is a DTensor now: the utils byte counts take this rank's local shard
    held = dict(params=utils.parameter_bytes(model), grads=utils.gradient_bytes(model),
                states=utils.optimizer_state_bytes(optimizer), quant_constants=utils.quant_constant_bytes(model),
                trainable_params=utils.parameter_bytes(model, trainable_only=True))
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}  # a collective
    losses = mean_over_ranks(model, ids, loss)
    if peak:
        held["peak"] = steady_step_peak(model, optimizer, ids)
    return held, grads, losses


def fsdp1_run(model: torch.nn.Module, ids: torch.Tensor, lr: float) -> dict:
    """The older FSDP, which flattens each wrapped module's parameters into one tensor, with PEFT's wrapping policy.

    Returns ``{"error": None, "loss": ...}``, or the error that wrapping or the step raised."""
    from peft.utils.other import fsdp_auto_wrap_policy

    try:
        wrapped = FullyShardedDataParallel(model, auto_wrap_policy=fsdp_auto_wrap_policy(model),
                                           use_orig_params=False, device_id=torch.device("cpu"))
        optimizer, loss = train_step(wrapped, ids, lr)
        return {"error": None, "loss": mean_over_ranks(wrapped, ids, loss)[0]}
    except Exception as err:  # the point of the run: which error, if any
        return {"error": f"{type(err).__name__}: {err}"}


@record  # torchrun then reports a failing rank's traceback
def main() -> None:
    settings = read_settings(sys.argv[1] if len(sys.argv) > 1 else None)
    dist.init_process_group("gloo", timeout=timedelta(seconds=settings["collective_timeout_s"]))
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == settings["fail_rank"]:
        raise RuntimeError(f"rank {rank} stops here on purpose (settings['fail_rank'])")
    if settings["batch"] % world:
        raise ValueError(f"batch={settings['batch']} does not split evenly over {world} ranks.")
    out = Path(settings["out"])
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for run in settings["runs"]:
        model, tokenizer = build(run, settings)
        ids = token_batch(tokenizer, settings["batch"], settings["seq_len"]).chunk(world)[rank]  # my micro-batch
        mine = {"rank": rank}
        if run.endswith("/fsdp1"):
            mine.update(fsdp1_run(model, ids, settings["lr"]))
        else:
            held, grads, losses = (ddp_run if run == "ddp" else fsdp2_run)(model, ids, settings["lr"],
                                                                         settings["peaks"])
            mine.update(held, loss=losses[0], loss_after_step=losses[1])
            if rank == 0 and run in ("ddp", "full"):
                torch.save({n: g.detach().clone() for n, g in grads.items()}, out / f"world{world}_{run}_grads.pt")
            del grads
        results.setdefault(run, []).append(mine)
        del model
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        merged = {run: [r for per_rank in gathered for r in per_rank[run]] for run in settings["runs"]}
        (out / f"world{world}.json").write_text(json.dumps(merged, indent=1))
        print(f"{world} rank(s), runs {', '.join(settings['runs'])}: results in {out / f'world{world}.json'}")
    dist.barrier()  # every rank waits for all: none closes its connections while another still uses them
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
