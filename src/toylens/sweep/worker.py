"""The part of a sweep that runs where the training happens: one job = one member, or a group of
members trained as one vectorised ensemble.

The local backend starts `python -m toylens.sweep.worker JOB.json` per job (its output goes to the
job's log); the Ray backend calls `run_job` inside a Ray task. Either way every member is trained
with `resume=True`, so a retried or rerun job continues from the last epoch checkpoint, and each
member's outcome is written to `<sweep>/status/<member>.json` (done, or failed with a one-line
error and the log's path). A member that fails does not stop the other members of its job.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toylens.errors import ToylensError

log = logging.getLogger("toylens")


@dataclass
class Job:
    """What a worker needs, as plain data (JSON for the local backend, a Ray task argument)."""

    id: str
    configs: list[dict[str, Any]]
    out: str
    log: str
    device: str = "auto"
    threads: int = 1
    gpus: float = 0.0
    ensemble: bool = False
    wandb: dict[str, Any] | None = None

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.configs]


def status_path(out: str | Path, name: str) -> Path:
    return Path(out) / "status" / f"{name}.json"


def run_job(job: Job) -> dict[str, dict[str, Any]]:
    """Train the job's members; returns (and writes) each member's status."""
    import torch

    from toylens.config import validate_config
    from toylens.storage import atomic_write_json

    if job.threads > 0:
        torch.set_num_threads(job.threads)
    cfgs = [validate_config(raw, f"job {job.id}") for raw in job.configs]
    for cfg in cfgs:
        status_path(job.out, cfg.name).unlink(missing_ok=True)
    log.info("job %s: %s on %s", job.id, ", ".join(job.names), job.device)
    errors = _train_ensemble(job, cfgs) if job.ensemble and len(cfgs) > 1 else _train_each(job, cfgs)
    statuses = {}
    for cfg in cfgs:
        error = errors.get(cfg.name)
        statuses[cfg.name] = {"status": "failed" if error else "done", "error": error, "log": job.log, "job": job.id}
        atomic_write_json(status_path(job.out, cfg.name), statuses[cfg.name])
    return statuses


def _train_each(job: Job, cfgs: list) -> dict[str, str]:
    from toylens.train import train

    errors = {}
    for cfg in cfgs:
        try:
            train(cfg, job.out, resume=True, device=job.device, progress=False, callbacks=_callbacks(job, cfg))
        except Exception as e:  # noqa: BLE001 - recorded; the next member still runs
            errors[cfg.name] = _one_line(e)
            log.error("%s failed: %s\n%s", cfg.name, errors[cfg.name], traceback.format_exc())
    return errors


def _train_ensemble(job: Job, cfgs: list) -> dict[str, str]:
    from toylens.train.ensemble import train_ensemble

    try:
        outcomes = train_ensemble(
            cfgs, job.out, resume=True, device=job.device, progress=False, callbacks=lambda cfg: _callbacks(job, cfg)
        )
    except Exception as e:  # noqa: BLE001 - the whole group failed; each member records why
        log.error("ensemble %s failed: %s\n%s", job.id, _one_line(e), traceback.format_exc())
        return {cfg.name: _one_line(e) for cfg in cfgs}
    return {o.name: o.error for o in outcomes if o.error}


def _callbacks(job: Job, cfg: Any) -> list:
    if not job.wandb:
        return []
    from toylens.train.wandb_log import WandbLogger

    return [WandbLogger(**job.wandb)]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, ToylensError) else f"{type(e).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    """`python -m toylens.sweep.worker JOB.json [PARENT_PID]`: run one job, logging to stderr;
    with PARENT_PID, the worker dies with that process (see `die_with_parent`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        die_with_parent(int(args[1]))
    job = Job(**json.loads(Path(args[0]).read_text()))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    run_job(job)
    return 0


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker when the sweep process that started it dies (Linux),
    as a kill of the sweep would not otherwise reach its workers: they would train on, holding
    their runs' locks, while the rerun of the sweep wants to resume them."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the sweep died before the line above took effect
        sys.exit(f"the sweep process {parent} that started this worker is gone")


def job_to_json(job: Job) -> str:
    return json.dumps(asdict(job), indent=1)


if __name__ == "__main__":
    sys.exit(main())
