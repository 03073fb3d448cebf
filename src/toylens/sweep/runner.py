"""Running a sweep: which members still need training, in which jobs, on which backend; and the
summary that lists every member.

    runs/<sweep>/
      sweep.json            the spec, and every member: varied values, status, error, log, metrics,
                            and its best checkpoint (best_checkpoint, best_metric, best_goal, best_value)
      summary.csv           the same as a table (one row per member)
      <member>/             an ordinary run directory per member (toylens.load works on it)
      logs/<job>.log        each job's output (a job is one member, or one ensemble)
      status/<member>.json  the worker's word on each member (done, or failed with its error)

A rerun skips finished members, resumes interrupted ones from their last epoch checkpoint and
retries failed ones. Members that share everything but seed, lr, weight decay and L1 coefficient
(and the epoch they are at) are trained as vectorised ensembles with `ensemble=True`, which is
the default when training on a GPU.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from toylens.device import resolve_device
from toylens.errors import ToylensError
from toylens.rundir import RunDir
from toylens.storage import atomic_write_json, atomic_write_text
from toylens.sweep.rank import ranking
from toylens.sweep.spec import Member, SweepSpec, expand, load_sweep
from toylens.sweep.worker import Job, status_path
from toylens.tasks.registry import task_class
from toylens.train.ensemble import ensemble_key
from toylens.train.loop import metric_goal

log = logging.getLogger("toylens")


class SweepFailed(ToylensError):
    """Some members failed; the others finished and the summary lists both."""

    exit_code = 1


@dataclass
class SweepResult:
    sweep_dir: Path
    rows: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] != "done"]


def run_sweep(
    spec: SweepSpec | str | Path | dict,
    out: str | Path = "runs",
    *,
    backend: str = "local",
    jobs: int = 1,
    ensemble: bool | None = None,
    ensemble_size: int = 32,
    wandb: bool = False,
    device: str = "auto",
    ray_address: str | None = None,
    progress: bool = True,
    backend_obj: Any = None,
) -> SweepResult:
    """Train every member of a sweep that is not finished; see the module docstring.

    `ensemble=None` means: ensembles when the members train on a GPU. `backend_obj` replaces
    the backend built from `backend`/`jobs`/`ray_address` (e.g. a RayBackend with its own options).
    """
    spec, members = _load(spec)
    sweep_dir = Path(out) / spec.name
    runner = backend_obj or _backend(backend, jobs, ray_address)
    uses_gpu = _uses_gpu(device, runner)
    todo = [m for m in members if not RunDir(sweep_dir / m.name).has("summary.json")]
    plan = _plan(todo, sweep_dir, ensemble if ensemble is not None else uses_gpu, ensemble_size)
    wandb_args = _wandb_args(spec, sweep_dir) if wandb else None
    job_list = [_job(group, sweep_dir, device, runner, uses_gpu, wandb_args) for group in plan]
    notes: dict[str, dict[str, str | None]] = {
        m.name: {"action": "skipped (finished)"} for m in members if m not in todo
    }
    for job in job_list:
        for name in job.names:
            verb = "resumed" if RunDir(sweep_dir / name).exists() else "trained"
            notes[name] = {"action": verb + (" in an ensemble" if job.ensemble else ""), "log": job.log}
    log.info(
        "sweep %s: %d members, %d finished, %d to train in %d jobs",
        spec.name,
        len(members),
        len(members) - len(todo),
        len(todo),
        len(job_list),
    )
    bar = tqdm(total=len(todo), desc=spec.name, unit="member", disable=not progress, dynamic_ncols=True)

    def on_done(job: Job, error: str | None) -> None:
        for name in job.names:
            notes[name]["worker_error"] = error
        bar.update(len(job.names))
        write_summary(sweep_dir, spec, members, notes)

    write_summary(sweep_dir, spec, members, notes)
    try:
        with bar:
            runner.run(job_list, on_done)
    finally:
        rows = write_summary(sweep_dir, spec, members, notes)
    return SweepResult(sweep_dir, rows)


def _load(spec: SweepSpec | str | Path | dict) -> tuple[SweepSpec, list[Member]]:
    if isinstance(spec, SweepSpec):
        return spec, expand(spec)
    parsed, root = load_sweep(spec)
    where = str(spec) if isinstance(spec, (str, Path)) else "sweep spec"
    return parsed, expand(parsed, root, where)


def _backend(name: str, jobs: int, ray_address: str | None) -> Any:
    if name == "local":
        from toylens.sweep.local import LocalBackend

        return LocalBackend(jobs)
    if name == "ray":
        from toylens.sweep.ray_backend import RayBackend

        return RayBackend(ray_address)
    raise ToylensError(f"--backend {name!r}: expected local or ray")


def _uses_gpu(device: str, runner: Any) -> bool:
    """Whether members will train on GPUs (for "auto" with Ray: whether the cluster has any)."""
    if device == "auto" and hasattr(runner, "cluster_has_gpus"):
        return runner.cluster_has_gpus()
    return resolve_device(device).type == "cuda"


def _plan(todo: list[Member], sweep_dir: Path, ensemble: bool, size: int) -> list[list[Member]]:
    """One group per job: single members, or ensembles of members that share a key and the step
    they resume from (at most `size` each)."""
    if not ensemble:
        return [[m] for m in todo]
    groups: dict[tuple[str, int], list[Member]] = {}
    for m in todo:
        groups.setdefault((ensemble_key(m.config), _resume_step(sweep_dir / m.name)), []).append(m)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), max(1, size))]


def _resume_step(path: Path) -> int:
    run = RunDir(path)
    if not run.exists():
        return 0
    resumable = [c for c in run.checkpoints() if c.resumable]
    return resumable[-1].step if resumable else 0


def _job(
    group: list[Member], sweep_dir: Path, device: str, runner: Any, uses_gpu: bool, wandb_args: dict | None
) -> Job:
    job_id = group[0].name if len(group) == 1 else f"ensemble-{group[0].name}-x{len(group)}"
    return Job(
        id=job_id,
        configs=[m.config.model_dump(mode="json") for m in group],
        out=str(sweep_dir),
        log=str(sweep_dir / "logs" / f"{job_id}.log"),
        device=device,
        threads=runner.threads_per_job(),
        gpus=runner.gpus_per_job(uses_gpu),
        ensemble=len(group) > 1,
        wandb=wandb_args,
    )


def _wandb_args(spec: SweepSpec, sweep_dir: Path) -> dict[str, Any]:
    try:
        import wandb  # noqa: F401 - fail here, once, rather than in every worker
    except ImportError:
        raise ToylensError("--wandb: the wandb package is not installed (pip install 'toylens[wandb]')") from None
    return {
        "project": spec.wandb.project,
        "entity": spec.wandb.entity,
        "group": spec.name,
        "tags": list(spec.wandb.tags),
        "dir": str(sweep_dir),
    }


# ------------------------------------------------------------------------------------ summary


def member_row(sweep_dir: Path, member: Member, note: dict[str, Any]) -> dict[str, Any]:
    """Everything the summary says about one member; `note` is what this invocation did with it
    (action, log, and the worker's error if its process died)."""
    run = RunDir(sweep_dir / member.name)
    row: dict[str, Any] = {
        "name": member.name,
        "status": "pending",
        "action": note.get("action", ""),
        "seed": member.seed,
        **member.params,
        "error": None,
        "log": note.get("log"),
        "run_dir": str(run.path),
    }
    status_file = status_path(sweep_dir, member.name)
    if run.has("summary.json"):
        summary = run.read_json("summary.json")
        row["status"] = "done"
        row.update({k: v for k, v in summary["final"].items() if "/" in k})
        best = summary.get("best") or {}
        row.update(
            epochs=summary["epochs"],
            wall_s=round(summary["wall_s"], 2),
            best_checkpoint=best.get("checkpoint"),
            best_metric=best.get("metric"),
            best_goal=best.get("goal") or _goal(member, best.get("metric")),
            best_value=best.get("value"),
        )
    elif status_file.is_file() and json.loads(status_file.read_text())["status"] == "failed":
        status = json.loads(status_file.read_text())
        row.update(status="failed", error=status["error"], log=status["log"])
    elif note.get("worker_error"):
        row.update(status="failed", error=note["worker_error"])
    elif run.exists():
        row["status"] = "interrupted"
    return row


def _goal(member: Member, metric: str | None) -> str | None:
    """The direction of a best metric that a summary written before toylens recorded it lacks."""
    try:
        return metric_goal(task_class(member.config.task), metric) if metric else None
    except ToylensError:
        return None


def write_summary(
    sweep_dir: Path, spec: SweepSpec, members: list[Member], notes: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Write sweep.json and summary.csv (atomically) and return the rows."""
    rows = [member_row(sweep_dir, m, notes.get(m.name, {})) for m in members]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "interrupted", "pending")}
    atomic_write_json(
        sweep_dir / "sweep.json", {"spec": spec.model_dump(mode="json"), "counts": counts, "members": rows}
    )
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    return rows


def format_table(rows: list[dict[str, Any]], metric: str | None = None, varied: list[str] | None = None) -> str:
    """A plain-text table: rank, name, status, the varied values, one metric, and the error if any.

    Ranked like the report (`toylens.sweep.rank`): by the selection metric at each member's best
    checkpoint, in the task's direction, best first, with that value as the metric column; the
    unranked (failed, interrupted, pending) last. Where the members share no selection metric, in
    sweep order with `metric` (default: the first */loss column)."""
    varied = varied or []
    rank = ranking(rows)
    if rank:
        metric, order = f"best {rank.metric}", rank.order
    else:
        metric, order = (
            metric or next((k for r in rows for k in r if k.endswith("/loss")), None),
            list(range(len(rows))),
        )
    header = ["rank", "member", "status", *varied, *([metric] if metric else []), "error / log"]
    lines = [header]
    for i in order:
        r = rows[i]
        value = r.get("best_value") if rank else r.get(metric) if metric else None
        cells = [_cell(rank.ranks[i] if rank else None), r["name"], r["status"], *[_cell(r.get(k)) for k in varied]]
        cells += [_cell(value)] if metric else []
        cells.append(f"{r['error']} (log: {r['log']})" if r.get("error") else "")
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) + "  " + str(line[-1]) for line in lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)
