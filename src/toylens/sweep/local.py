"""Local backend: each job in its own Python process, at most `jobs` at a time.

A separate process per job keeps a crash (segfault, out of memory, a bug in one member) from
taking the sweep down, gives every job its own log file, and lets Ctrl-C stop everything
cleanly: the workers checkpoint every epoch, so a rerun resumes them. A worker dies with the
sweep process even when that is killed outright (SIGKILL; Linux), so a rerun never finds its
members still training. Each worker uses
cpu_count / jobs torch threads, so parallel jobs do not fight over cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from toylens.storage import atomic_write_text
from toylens.sweep.worker import Job, job_to_json

OnDone = Callable[[Job, "str | None"], None]


class LocalBackend:
    """Runs jobs as `python -m toylens.sweep.worker` processes."""

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, jobs)

    def threads_per_job(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def gpus_per_job(self, uses_gpu: bool) -> float:
        return 0.0  # processes share the local GPUs; nothing to reserve

    def run(self, jobs: list[Job], on_done: OnDone) -> None:
        """Run every job; `on_done(job, error)` as each ends (error None when the worker exited
        normally; members' own failures are in their status files)."""
        queue = list(jobs)
        running: dict[subprocess.Popen, tuple[Job, object]] = {}
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    job = queue.pop(0)
                    proc, logfile = self._start(job)
                    running[proc] = (job, logfile)
                for proc in [p for p in running if p.poll() is not None]:
                    job, logfile = running.pop(proc)
                    logfile.close()  # type: ignore[attr-defined]
                    on_done(job, None if proc.returncode == 0 else _exit_message(proc.returncode, job))
                time.sleep(0.1)
        except BaseException:
            self._stop(running)
            raise

    def _start(self, job: Job) -> tuple[subprocess.Popen, object]:
        job_file = Path(job.out) / "jobs" / f"{job.id}.json"
        atomic_write_text(job_file, job_to_json(job))
        Path(job.log).parent.mkdir(parents=True, exist_ok=True)
        logfile = open(job.log, "a")
        logfile.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} job {job.id} ===\n")
        logfile.flush()
        env = {**os.environ, "OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "toylens.sweep.worker", str(job_file), str(os.getpid())],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        return proc, logfile

    @staticmethod
    def _stop(running: dict) -> None:
        """Interrupt the workers (they stop like Ctrl-C on a run), then kill what does not exit."""
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.time() + 20
        for proc, (_, logfile) in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logfile.close()


def _exit_message(code: int, job: Job) -> str:
    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return f"worker process {how}; see {job.log}"
