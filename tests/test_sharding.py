"""Sharding for notebook 09: the per-rank arithmetic by ZeRO stage (``utils.estimator``), FSDP2 shards counted by
``utils.memory`` on real ranks, and launching ranks with torchrun (``utils.launch``)."""
import re

import pytest

from utils import estimator as E
from utils import launch

SMALL = E.ModelShape(layers=4, hidden=64, intermediate=160, heads=4, kv_heads=2, vocab=128, tied_embeddings=True)


def test_per_rank_static_divides_by_stage():
    w, g, s = 100, 100, 200
    assert E.per_rank_static(w, g, s, 4, 0) == {"weights": 100, "gradients": 100, "optimizer states": 200}
    assert E.per_rank_static(w, g, s, 4, 1) == {"weights": 100, "gradients": 100, "optimizer states": 50}
    assert E.per_rank_static(w, g, s, 4, 2) == {"weights": 100, "gradients": 25, "optimizer states": 50}
    assert E.per_rank_static(w, g, s, 4, 3) == {"weights": 25, "gradients": 25, "optimizer states": 50}


@pytest.mark.parametrize("world, stage", [(0, 3), (2.0, 3), (True, 3), (2, 4), (2, -1)])
def test_bad_world_or_stage_is_refused(world, stage):
    with pytest.raises(ValueError, match="world|stage"):
        E.per_rank_static(1, 1, 1, world, stage)


def test_one_gpu_without_sharding_is_the_estimate():
    recipe = E.Recipe(method="full", precision="fp32", seq_len=32, device="cpu")
    one = E.estimate(SMALL, recipe)
    for stage in (0, 3):
        est = E.sharded_estimate(SMALL, recipe, world=1, stage=stage)
        assert est.gathered == 0
        assert est.per_gpu == one.total


def test_stage_3_gathers_two_layers_and_the_root():
    recipe = E.Recipe(method="full", precision="fp32", seq_len=32, device="cpu")
    h, i, q, kv = SMALL.hidden, SMALL.intermediate, SMALL.heads * SMALL.head_dim, SMALL.kv_heads * SMALL.head_dim
    layer = 4 * (2 * h * q + 2 * h * kv + 3 * h * i + 2 * h)  # seven fp32 matrices and two norms
    root = 4 * (SMALL.vocab * h + h)  # tied embedding and the final norm
    est = E.sharded_estimate(SMALL, recipe, world=2, stage=3)
    assert est.gathered == 2 * layer + root
    one = E.estimate(SMALL, recipe)
    assert est.weights == one.peak_parts["weights"] / 2


def test_offload_moves_the_shards_to_cpu_ram():
    shape = E.common_shapes()["Llama-2-70B"]
    recipe = E.Recipe(method="qlora", precision="mixed", lora_r=8, lora_targets="all-linear", optimizer="adamw_fused",
                      checkpointing=True, batch_size=2, seq_len=2048, device="cuda")
    kept = E.sharded_estimate(shape, recipe, world=2, stage=3)
    offloaded = E.sharded_estimate(shape, recipe, world=2, stage=3, offload=True)
    shards = kept.weights + kept.gradients + kept.optimizer_states
    assert kept.per_gpu - offloaded.per_gpu == pytest.approx(shards)
    assert offloaded.cpu_ram == pytest.approx(2 * shards)
    per_world = [E.sharded_estimate(shape, recipe, world=w, stage=3).per_gpu for w in (2, 4, 8)]
    assert per_world == sorted(per_world, reverse=True)
    with pytest.raises(ValueError, match="stage=3"):
        E.sharded_estimate(shape, recipe, world=2, stage=2, offload=True)


def test_a_transformers_config_gives_the_estimate_of_its_shape():
    from transformers import LlamaConfig

    cfg = LlamaConfig(num_hidden_layers=3, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100)
    recipe = E.Recipe(method="full", precision="fp32", seq_len=32, device="cpu")
    assert E.sharded_estimate(cfg, recipe, world=2) == E.sharded_estimate(E.shape_from_config(cfg), recipe, world=2)
    assert cfg.num_hidden_layers == 3  # the layer count read, not changed
    with pytest.raises(ValueError, match="2 layers or more"):
        E.sharded_estimate(E.shape_from_config({**cfg.to_dict(), "num_hidden_layers": 1}), recipe, world=2)


RANK_SCRIPT = """
import sys
from datetime import timedelta
import torch, torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributed.fsdp import fully_shard

@record
def main():
    sys.path.insert(0, {root!r})
    import utils
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    if dist.get_rank() == {fail!r}:
        raise ValueError("deliberate failure on this rank")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8))
    full = utils.parameter_bytes(model)
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    model(torch.randn(4, 16)).sum().backward()
    print(f"RANK {{dist.get_rank()}} {{full}} {{utils.parameter_bytes(model)}} {{utils.gradient_bytes(model)}}")
    dist.destroy_process_group()

main()
"""


def _script(tmp_path, fail=None):
    from utils.loading import REPO

    path = tmp_path / "rank.py"
    path.write_text(RANK_SCRIPT.format(root=str(REPO), fail=fail))
    return path


def test_torchrun_shards_a_model_over_two_ranks(tmp_path):
    # On a 2-core CI machine busy with the other worker, a gloo rank has died by a signal (SIGABRT after a
    # segmentation fault in a communication thread) twice in a row; this test is about the sharding, so it
    # allows three relaunches (the relaunch itself is tested below).
    out = launch.torchrun(_script(tmp_path), 2, timeout=240, relaunch_on_signal=3)
    # the two ranks share one stdout: their lines may interleave, so find the reports anywhere in it
    lines = sorted(re.findall(r"RANK (\d+) (\d+) (\d+) (\d+)", out))
    assert [line[0] for line in lines] == ["0", "1"], out
    for _, full, local, grads in lines:
        assert int(local) == int(full) // 2 == int(grads)  # every dimension here divides by 2


def test_torchrun_reports_the_failing_rank(tmp_path, capsys):
    script = _script(tmp_path, fail=1)
    with pytest.raises(launch.RankFailure, match="deliberate failure on this rank") as err:
        launch.torchrun(script, 2, timeout=240)
    assert "rank      : 1" in str(err.value)
    # a Python exception is the script's own error: raised at once, never relaunched
    assert not isinstance(err.value, launch.RankKilled) and "launching again" not in capsys.readouterr().err
    assert launch.leftover_processes(str(script)) == []


ABORT_SCRIPT = """import os, sys
from pathlib import Path
marker = Path({marker!r})
if os.environ["LOCAL_RANK"] == "1" and ({every_time!r} or not marker.exists()):
    marker.touch()
    print("rank 1: the last words before the abort", file=sys.stderr, flush=True)
    os.abort()
print("rank", os.environ["LOCAL_RANK"], "finished", flush=True)
"""


def test_torchrun_relaunches_once_and_shows_what_a_rank_killed_by_a_signal_wrote(tmp_path, capsys):
    # A C++ abort (gloo's communication threads, say) leaves no Python traceback: torchrun reports only
    # "Signal 6 (SIGABRT)", so the rank's own last lines must come with the error, after one relaunch.
    script = tmp_path / "abort.py"
    script.write_text(ABORT_SCRIPT.format(marker=str(tmp_path / "aborted"), every_time=True))
    with pytest.raises(launch.RankKilled) as err:
        launch.torchrun(script, 2, timeout=120)
    message = str(err.value)
    assert "SIGABRT" in message and "local_rank: 1" in message
    assert "--- its stderr (last lines) ---\nrank 1: the last words before the abort" in message
    assert capsys.readouterr().err.count("abort.py on 2 ranks: rank 1 was killed by SIGABRT; launching again (1 of 1)") == 1
    assert launch.leftover_processes(str(script)) == []


def test_torchrun_relaunch_recovers_from_one_killed_rank(tmp_path, capsys):
    script = tmp_path / "abort_once.py"
    script.write_text(ABORT_SCRIPT.format(marker=str(tmp_path / "aborted"), every_time=False))
    out = launch.torchrun(script, 2, timeout=120)
    assert "rank 0 finished" in out and "rank 1 finished" in out
    assert "rank 1 was killed by SIGABRT; launching again (1 of 1)" in capsys.readouterr().err
    with pytest.raises(launch.RankKilled):  # no relaunch asked for: the first abort raises
        (tmp_path / "aborted").unlink()
        launch.torchrun(script, 2, timeout=120, relaunch_on_signal=0)


def test_torchrun_kills_a_launch_past_its_timeout(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    with pytest.raises(launch.RankFailure, match="did not finish within 20 s"):
        launch.torchrun(script, 1, timeout=20)
    assert launch.leftover_processes(str(script)) == []


def test_torchrun_refuses_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        launch.torchrun(tmp_path / "missing.py", 2)
    with pytest.raises(ValueError):
        launch.torchrun(_script(tmp_path), 0)
