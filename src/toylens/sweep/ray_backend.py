"""Ray backend (extra: `pip install 'toylens[ray]'`): each job is a Ray task with a CPU (and,
training on GPUs, a GPU) request, on a local Ray or an existing cluster (`--ray-address`).

If the worker process running a job dies (killed, out of memory, a node lost), Ray runs the task
again, up to `max_retries` times; the member resumes from its last epoch checkpoint. An exception
inside training is not retried: it is recorded as that member's failure, as with the local
backend. Every node must have toylens installed and see `--out` at the same path (a shared
filesystem), since members write their run directories there and resume from them.

Only plain data (the `Job` dataclass: configs as dicts, paths, numbers) crosses to the workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toylens.errors import ToylensError
from toylens.sweep.local import OnDone
from toylens.sweep.worker import Job, run_job

JobFn = Callable[[Job], dict]


class RayBackend:
    """Runs jobs as Ray tasks; starts (and later stops) a local Ray unless one is running or an
    address is given."""

    def __init__(
        self, address: str | None = None, max_retries: int = 3, job_fn: JobFn = run_job, cpus_per_job: int = 1
    ):
        try:
            import ray
        except ImportError:
            raise ToylensError("--backend ray: the ray package is not installed (pip install 'toylens[ray]')") from None
        self.ray, self.address, self.max_retries, self.job_fn = ray, address, max_retries, job_fn
        self.cpus_per_job = cpus_per_job
        self.started = False  # whether this backend started the Ray it uses (and must stop it)

    def threads_per_job(self) -> int:
        return self.cpus_per_job

    def gpus_per_job(self, uses_gpu: bool) -> float:
        return 1.0 if uses_gpu else 0.0

    def cluster_has_gpus(self) -> bool:
        self._connect()
        return self.ray.cluster_resources().get("GPU", 0) > 0

    def _connect(self) -> None:
        """Use the running Ray, else connect to `address`, else start a local Ray."""
        if not self.ray.is_initialized():
            self.ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            self.started = True

    def run(self, jobs: list[Job], on_done: OnDone) -> None:
        self._connect()
        task = self.ray.remote(_ray_task)
        try:
            pending = {
                task.options(
                    num_cpus=job.threads,
                    num_gpus=job.gpus,
                    max_retries=self.max_retries,
                    retry_exceptions=False,
                    name=f"toylens:{job.id}",
                ).remote(job, self.job_fn): job
                for job in jobs
            }
            while pending:
                ready, _ = self.ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready[0])
                try:
                    self.ray.get(ready[0])
                    on_done(job, None)
                except self.ray.exceptions.RayError as e:
                    first = " ".join(str(e).split())[:300]
                    on_done(
                        job,
                        f"Ray task failed after {self.max_retries} retries ({type(e).__name__}: {first}); "
                        f"see {job.log}",
                    )
        except BaseException:
            for ref in pending:
                self.ray.cancel(ref, force=True)
            raise
        finally:
            if self.started:
                self.ray.shutdown()
                self.started = False


def _ray_task(job: Job, job_fn: JobFn) -> dict[str, Any]:
    """Inside the Ray worker: log to the job's file, then run the job."""
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(job.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("toylens")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with open(job.log, "a") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} job {job.id} (Ray) ===\n")
    try:
        return job_fn(job)
    finally:
        logger.removeHandler(handler)
        handler.close()
