"""The Ray backend against a local Ray started here: a member whose worker process dies mid-run
(the first time only) is retried by Ray and resumes from its last epoch checkpoint; the sweep
finishes with every member done."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import ray
import yaml
from conftest import TINY

from toylens.config import validate_config
from toylens.rundir import RunDir
from toylens.sweep import run_sweep
from toylens.sweep.ray_backend import RayBackend
from toylens.sweep.worker import Job, run_job
from toylens.train import train
from toylens.train.callbacks import TrainCallback

VICTIM = "ray-sw-weight_decay0.1-seed0"


class DieAfterEpoch1(TrainCallback):
    def on_epoch_end(self, row):
        if row["epoch"] == 1:
            os._exit(1)  # the Ray worker process dies without cleaning up


def dies_once(job: Job) -> dict:
    """Run the job; the victim's first attempt kills its worker after epoch 1's checkpoint."""
    marker = Path(job.out) / "victim-died"
    if job.names == [VICTIM] and not marker.exists():
        marker.touch()
        train(
            validate_config(job.configs[0]),
            job.out,
            resume=True,
            device="cpu",
            progress=False,
            callbacks=[DieAfterEpoch1()],
        )
    return run_job(job)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # Ray workers cannot import this test module, so its functions travel by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.mark.slow
def test_worker_death_is_retried_and_the_member_resumes(tmp_path, local_ray):
    base = copy.deepcopy(TINY)
    base["train"]["epochs"] = 2
    spec = {"name": "ray-sw", "base": base, "parameters": {"train.weight_decay": [0.0, 0.1]}}
    result = run_sweep(
        spec, tmp_path, backend_obj=RayBackend(job_fn=dies_once, max_retries=2), device="cpu", progress=False
    )
    assert (tmp_path / "ray-sw" / "victim-died").exists(), "the victim's worker must have died once"
    assert [r["status"] for r in result.rows] == ["done", "done"], result.rows
    victim = next(r for r in result.rows if r["name"] == VICTIM)
    log = Path(victim["log"]).read_text()
    assert "epoch 1:" in log and "resuming after epoch 1" in log
    assert [r["epoch"] for r in RunDir(tmp_path / "ray-sw" / VICTIM).read_jsonl("metrics.jsonl")] == [0, 1, 2]
    assert yaml.safe_load((tmp_path / "ray-sw" / VICTIM / "config.yaml").read_text())["train"]["weight_decay"] == 0.1
