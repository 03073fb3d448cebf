"""Multi-process training under torchrun (gloo, 2 CPU processes): the shard weights make the
averaged gradient the global batch's; a run interrupted in one process resumes under torchrun
and ends where an uninterrupted single-process run ends (float64, 1e-9), written once by rank 0."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from toylens import load, train
from toylens.rundir import RunDir
from toylens.tasks.base import IGNORE, Batch
from toylens.train.callbacks import TrainCallback
from toylens.train.distributed import DistributedGroup


def test_shard_weights_recover_the_global_mean_loss():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 7, (5, 6), generator=gen)
    targets = torch.randint(0, 7, (5, 6), generator=gen)
    targets[torch.rand(5, 6, generator=gen) < 0.4] = IGNORE  # rows have different target counts
    batch = Batch(tokens, targets)
    logits = torch.randn(5, 6, 7, generator=gen, dtype=torch.float64)
    global_mean = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    for world in (2, 3):
        shards = [DistributedGroup(r, world, torch.device("cpu"), owns_group=False).shard(batch) for r in range(world)]
        assert torch.equal(torch.cat([s[0].tokens for s in shards]), tokens)  # a partition, in order
        assert sum(s[2] for s in shards) == pytest.approx(world)  # sequence shares
        rows = torch.arange(5).tensor_split(world)
        local = [F.cross_entropy(logits[i].flatten(0, 1), targets[i].flatten(), ignore_index=IGNORE) for i in rows]
        ddp_average = sum(w * loss for (_, w, _), loss in zip(shards, local)) / world  # what DDP's mean sees
        assert float(ddp_average) == pytest.approx(float(global_mean), rel=1e-12)


SCRIPT = textwrap.dedent("""
    import logging, os, sys, torch
    from pathlib import Path
    torch.set_default_dtype(torch.float64)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from toylens import train
    result = train(sys.argv[1], sys.argv[2], resume=True, device="cpu", progress=False)
    Path(sys.argv[2], f"rank{os.environ['RANK']}.txt").write_text(str(sorted(result.metrics)))
""")


class Interrupt(TrainCallback):
    def on_epoch_end(self, row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_torchrun_two_ranks_resume_a_run_and_match_one_process(tmp_path):
    # 600 lists in batches of 63: shards of 32 and 31 sequences, and 17/16 in the last batch.
    cfg = tiny_config(
        name="ddp",
        train={
            "epochs": 3,
            "batch_size": 63,
            "weight_decay": 0.1,
            "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 0.001},
        },
    )
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        train(cfg, tmp_path / "one", progress=False, device="cpu")
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "two", progress=False, device="cpu", callbacks=[Interrupt()])
    finally:
        torch.set_default_dtype(old)
    (tmp_path / "cfg.yaml").write_text(cfg.model_dump_json())  # JSON is YAML
    (tmp_path / "script.py").write_text(SCRIPT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(tmp_path / "script.py"),
            str(tmp_path / "cfg.yaml"),
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every rank returns; only rank 0, which evaluated, has the metrics
    assert "test/loss" in (tmp_path / "two" / "rank0.txt").read_text()
    assert (tmp_path / "two" / "rank1.txt").read_text() == "[]"
    assert proc.stderr.count("resuming after epoch 1") == 1  # logged by rank 0 only
    run = RunDir(tmp_path / "two" / "ddp")
    assert [r["epoch"] for r in run.read_jsonl("metrics.jsonl")] == [0, 1, 2, 3]  # written once
    assert run.read_json("summary.json")["world_size"] == 2
    a, b = load(tmp_path / "one" / "ddp").model.state_dict(), load(run.path).model.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-9
    rows_a, rows_b = RunDir(tmp_path / "one" / "ddp").read_jsonl("metrics.jsonl"), run.read_jsonl("metrics.jsonl")
    for ra, rb in zip(rows_a, rows_b):  # train/* are averaged over both ranks' shards
        for key in ("test/loss", "train/loss", "train/l1"):
            assert rb.get(key, 0.0) == pytest.approx(ra.get(key, 0.0), abs=1e-9), (ra["epoch"], key)
