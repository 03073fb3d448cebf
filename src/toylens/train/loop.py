"""The training loop: config -> run directory with metrics and checkpoints.

    from toylens import train
    result = train("configs/sort-no-decay.yaml", out="runs")

One AdamW step per batch on the task's loss plus the L1 penalty; an evaluation and a resumable
checkpoint after every epoch (epoch 0 is the initialisation). Data order comes from a generator
seeded by (seed, epoch), so resuming from the last epoch checkpoint replays the interrupted epoch
exactly and the final weights are bit-identical to an uninterrupted run on CPU. `train.max_steps`
ends a run early: the epoch it stops in is cut short and ends like any other (an evaluation and a
checkpoint at the stop step), then the run finishes as usual.

Under torchrun (`WORLD_SIZE` set) the same loop runs on every rank with DistributedDataParallel:
see `train.distributed` for how batches are sharded and why the result matches one process.
Loggers plug in as `callbacks` (see `train.callbacks`); `train.ensemble` reuses `Trainer`'s
evaluation and checkpointing for every member of a vectorised ensemble.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from toylens.config import RunConfig, StepRange, TrainConfig, config_diff, config_to_yaml, load_config
from toylens.errors import ToylensError, TrainingDiverged
from toylens.memory import reuse_freed_memory
from toylens.model import Transformer
from toylens.rundir import FINAL_WEIGHTS, LOCK, RunDir, epoch_name, run_lock, state_file, step_name, weights_file
from toylens.tasks import Task, build_task
from toylens.tasks.base import Goal
from toylens.train.batches import device_batches
from toylens.train.callbacks import TrainCallback
from toylens.train.compiled import check_compiler, compile_forward
from toylens.train.determinism import deterministic_algorithms
from toylens.train.distributed import SingleProcess, process_group
from toylens.train.optim import build_optimizer, lr_at, set_lr
from toylens.train.precision import forward_autocast, loss_logits
from toylens.train.regularisers import Regularisers
from toylens.train.state import TrainState, restore_checkpoint, save_checkpoint, save_weights

log = logging.getLogger("toylens")

TRAINER_GOALS: dict[str, Goal] = {"train/l1": "min"}  # the metrics the trainer adds (train/loss is the task's loss)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    best: dict[str, Any] | None
    wall_s: float


__all__ = ["TrainResult", "Trainer", "epoch_order", "metric_goal", "train"]


def train(
    config: RunConfig | str | Path,
    out: str | Path = "runs",
    *,
    overrides: tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    callbacks: Sequence[TrainCallback] = (),
) -> TrainResult:
    """Train the run a config describes into `out/<name>`; see the module docstring."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    task = build_task(cfg.task)
    cfg = cfg.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx)
    step_plan(len(task.splits[task.train_split]), cfg.train)  # train.checkpoint_steps checked before any file
    group = process_group(device)  # joins the torchrun process group when WORLD_SIZE > 1
    check_compiler(cfg.train.compile, group.device)
    if group.device.type == "cpu":
        reuse_freed_memory()  # every step rebuilds the same large tensors; see toylens.memory
    path = Path(out) / cfg.name
    try:
        with run_lock(path, "train", create=True) if group.is_main else contextlib.nullcontext():
            group.on_main(lambda: prepare_run_dir(path, cfg, resume, overwrite).write_task_files(task.saved_files()))
            run = RunDir(path)
            (done,) = group.broadcast_ints([int(group.is_main and run.has("summary.json"))])
            if done:
                if group.is_main and resume:
                    restore_metrics(run)
                return finished_result(run) if group.is_main else TrainResult(run.path, {}, None, 0.0)
            with deterministic_algorithms(cfg.train.deterministic, group.device):
                model = Transformer(cfg.model, seed=cfg.seed).to(group.device)
                opt = build_optimizer(model, cfg.train)
                state = start_or_resume(run, cfg, task, model, opt, group)
                return Trainer(cfg, task, model, opt, run, state, progress, callbacks, group).fit()
    finally:
        group.close()


def finished_result(run: RunDir) -> TrainResult:
    """The result of a run that already has its summary."""
    log.info("%s: already complete", run.path)
    summary = run.read_json("summary.json")
    return TrainResult(run.path, summary["final"], summary["best"], summary["wall_s"])


def restore_metrics(run: RunDir) -> None:
    """Give a finished run whose metrics.jsonl no longer matches its manifest (damaged, or left
    out of the manifest by a crash) the rows kept in its last resumable checkpoint."""
    try:
        run.read_bytes("metrics.jsonl")
        return
    except ToylensError as damaged:
        last = [c for c in run.checkpoints() if c.resumable]
        rows = run.read_tensors(state_file(last[-1].name))[1]["trainer"].get("rows") if last else None
        if not rows:
            raise damaged
    run.write_jsonl("metrics.jsonl", rows)
    log.warning(
        "%s: metrics.jsonl did not match the run manifest; rewrote it from checkpoint %s", run.path, last[-1].name
    )


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the n training examples in 0-based `epoch` of a run with this seed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class Trainer:
    """Runs the remaining epochs of one run; one method per stage of an epoch.

    `group` is the process group (one process unless under torchrun); only its main process
    evaluates, writes the run directory and calls `callbacks`.
    """

    def __init__(
        self,
        cfg: RunConfig,
        task: Task,
        model: Transformer,
        opt: torch.optim.Optimizer,
        run: RunDir,
        state: TrainState,
        progress: bool,
        callbacks: Sequence[TrainCallback] = (),
        group: SingleProcess | None = None,
    ):
        self.cfg, self.task, self.model, self.opt, self.run, self.state = cfg, task, model, opt, run, state
        self.device = next(model.parameters()).device
        self.group = group or SingleProcess(self.device)
        self.net = self.group.wrap(model)  # DistributedDataParallel under torchrun; saved unwrapped
        self.net = compile_forward(self.net, cfg.train.compile, self.device)  # train.compile; never saved
        self.callbacks = list(callbacks) if self.group.is_main else []
        self.data = task.splits[task.train_split]
        self.steps_per_epoch, self.total_steps, self.log_steps = step_plan(len(self.data), cfg.train)
        self.penalty = Regularisers.of(model, cfg.train, cfg.model.act_fn).l1  # the decay is in opt's groups
        self.select = cfg.train.select_metric or task.select_metric
        self.bar = tqdm(
            total=self.total_steps,
            initial=state.step,
            desc=cfg.name,
            unit="step",
            disable=not progress or not self.group.is_main,
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def fit(self) -> TrainResult:
        start = time.perf_counter() - self.state.history.get("wall_s", 0.0)
        self.notify("on_train_start", self.cfg, self.run, self.state)
        try:
            with self.bar:
                while not self.done():
                    train_metrics = self.train_epoch()
                    self.end_epoch(train_metrics, time.perf_counter() - start)
            return self.finish(time.perf_counter() - start)
        except BaseException as e:
            self.notify("on_train_error", e)
            raise

    def done(self) -> bool:
        """Whether every epoch, or `train.max_steps` steps, are done."""
        return self.state.epoch >= self.cfg.train.epochs or self.state.step >= self.total_steps

    def epoch_steps(self) -> int:
        """Steps in the epoch about to start: all of its batches, or fewer where `train.max_steps`
        cuts it short (an epoch starts at step epoch * steps_per_epoch)."""
        return min(self.steps_per_epoch, self.total_steps - self.state.step)

    def end_epoch(self, train_metrics: dict[str, float], wall_s: float) -> dict[str, Any] | None:
        """Count the epoch, then (main process) evaluate, checkpoint and tell the callbacks."""
        self.state.epoch += 1
        self.state.history["wall_s"] = wall_s
        return self.group.on_main(lambda: self._evaluate_and_save(train_metrics))

    def _evaluate_and_save(self, train_metrics: dict[str, float]) -> dict[str, Any]:
        row = self.evaluate(train_metrics)
        save_checkpoint(self.run, epoch_name(self.state.epoch), self.model, self.cfg, self.state, self.opt)
        self.bar.set_postfix(epoch=self.state.epoch, **{k: f"{v:.4g}" for k, v in row.items() if "/" in k})
        self.notify("on_epoch_end", row)
        return row

    def finish(self, wall_s: float) -> TrainResult:
        """Final weights and summary.json (main process); the result on every process."""
        summary = self.group.on_main(lambda: self._write_summary(wall_s))
        if summary is None:  # not the main process
            return TrainResult(self.run.path, {}, None, wall_s)
        log.info("%s: done in %.1fs; %s", self.run.path, wall_s, _fmt(summary["final"]))
        return TrainResult(self.run.path, summary["final"], self.state.best, wall_s)

    def _write_summary(self, wall_s: float) -> dict[str, Any]:
        save_weights(self.run, FINAL_WEIGHTS, self.model, self.cfg, self.state)
        if self.state.best is not None:  # a best recorded before toylens kept its goal
            self.state.best.setdefault("goal", self.goal())
        summary = {
            "final": self.state.rows[-1],
            "best": self.state.best,
            "wall_s": wall_s,
            "epochs": self.state.epoch,
            "steps": self.state.step,
            "device": str(self.device),
            "torch": torch.__version__,
            "world_size": self.group.world,
            "baselines": self.task.baselines(),  # e.g. the unigram loss, which a report cannot compute
        }
        self.run.write_json("summary.json", summary)
        self.notify("on_train_end", summary)
        return summary

    def notify(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split in this epoch's order (up to `train.max_steps`); mean
        task loss and L1 penalty."""
        order = epoch_order(self.cfg.seed, self.state.epoch, len(self.data))
        sums = torch.zeros(2, device=self.device)  # task loss, L1 penalty
        tokens, t0 = 0, time.perf_counter()
        steps = self.epoch_steps()
        indices = order.split(self.cfg.train.batch_size)[:steps]
        shards = device_batches(indices, lambda idx: self.group.shard(self.data.batch(idx)), self.device)
        for i, (idx, (batch, loss_weight, l1_weight)) in enumerate(zip(indices, shards)):
            sums += self.step(batch, loss_weight, l1_weight)
            tokens += idx.numel() * self.cfg.model.n_ctx
            if self.state.step in self.log_steps:
                self.check_finite(self.group.mean(sums))
                name = step_name(self.state.step)
                self.group.on_main(partial(save_checkpoint, self.run, name, self.model, self.cfg, self.state))
            if i % 20 == 0:
                self.check_finite(self.group.mean(sums))
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                self.bar.set_postfix(
                    epoch=self.state.epoch + 1,
                    loss=f"{float(sums[0]) / (i + 1):.4f}",
                    tok_s=f"{rate:.3g}",
                    refresh=False,
                )
        sums = self.group.mean(sums)
        self.check_finite(sums)
        return self.epoch_metrics(sums, steps)

    def epoch_metrics(self, sums: torch.Tensor, steps: int) -> dict[str, float]:
        """train/loss (and train/l1 when the penalty is on) from the summed values of the epoch's `steps` steps."""
        loss, l1 = (sums / steps).tolist()
        return {"train/loss": loss, "train/l1": l1} if self.penalty.fwd_hooks else {"train/loss": loss}

    def step(self, batch: Any, loss_weight: float = 1.0, l1_weight: float = 1.0) -> torch.Tensor:
        """One optimisation step; returns [task loss, L1 penalty] (detached).

        The weights are this rank's share of the global batch under torchrun (1 otherwise)."""
        set_lr(self.opt, lr_at(self.state.step, self.total_steps, self.cfg.train))
        with self.model.hooks(self.penalty.fwd_hooks), forward_autocast(self.device, self.cfg.train.precision):
            logits = self.net(batch.tokens)
        logits = loss_logits(logits, self.cfg.train.precision)
        # A shard without targets still joins DDP's gradient all-reduce, with zero gradients.
        loss = self.task.loss(logits, batch) * loss_weight if loss_weight else logits.sum() * 0.0
        l1 = self.penalty.take().to(self.device)
        l1 = l1 * l1_weight if l1_weight else torch.zeros_like(l1)
        self.opt.zero_grad(set_to_none=True)
        (loss + l1).backward()
        if self.cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self.state.step += 1
        self.bar.update()
        return torch.stack([loss.detach(), l1.detach()])

    def evaluate(self, extra: dict[str, float]) -> dict[str, Any]:
        """Evaluate on every eval split, append to metrics.jsonl, track the best checkpoint."""
        self.model.eval()
        row: dict[str, Any] = {"epoch": self.state.epoch, "step": self.state.step, **extra}
        for split in self.task.eval_splits:
            row.update(self.task.evaluate(self.model, split, self.cfg.train.eval_batch_size))
        self.model.train()
        row["lr"] = lr_at(max(self.state.step - 1, 0), self.total_steps, self.cfg.train)
        row["wall_s"] = round(self.state.history.get("wall_s", 0.0), 3)
        self.state.rows.append(row)
        self.run.write_jsonl("metrics.jsonl", self.state.rows)
        if self.select not in row:
            raise ToylensError(f"train.select_metric: {self.select!r} is not a metric of this task ({_keys(row)})")
        value, best, goal = row[self.select], self.state.best, self.goal()
        if best is None or (value < best["value"] if goal == "min" else value > best["value"]):
            self.state.best = {
                "checkpoint": epoch_name(self.state.epoch),
                "metric": self.select,
                "value": value,
                "goal": goal,
            }
        log.info("epoch %d: %s", self.state.epoch, _fmt(row))
        return row

    def goal(self) -> Goal:
        """Whether the lowest ("min") or the highest ("max") value of the select metric is best."""
        try:
            return metric_goal(self.task, self.select)
        except ToylensError as e:
            raise ToylensError(f"train.select_metric: {e}") from None

    def check_finite(self, sums: torch.Tensor) -> None:
        if not torch.isfinite(sums).all():
            last = weights_file(epoch_name(self.state.epoch))
            raise TrainingDiverged(
                f"{self.cfg.name}: loss became {float(sums.sum())} in epoch {self.state.epoch + 1} "
                f"(step {self.state.step}); stopped, the last good checkpoint is {self.run.path}/{last}"
            )


def metric_goal(task: Task | type[Task], metric: str) -> Goal:
    """Whether the lowest ("min") or the highest ("max") value of `metric` is best: the task (a
    built task or its class) says for its metrics, the trainer for its own (train/l1). Raises
    ToylensError for a metric neither gives a direction."""
    return TRAINER_GOALS[metric] if metric in TRAINER_GOALS else task.goal(metric)


def planned_steps(steps_per_epoch: int, epochs: int, max_steps: int | None) -> int:
    """The optimisation steps a run takes: every epoch's, or `train.max_steps` if fewer."""
    return steps_per_epoch * epochs if max_steps is None else min(steps_per_epoch * epochs, max_steps)


def step_plan(n_train: int, train: TrainConfig) -> tuple[int, int, set[int]]:
    """(steps per epoch, steps in all, steps of the weight-only checkpoints) of a run on `n_train`
    training examples. The weight-only checkpoints are `train.log_checkpoints` log-spaced steps and
    the steps `train.checkpoint_steps` lists, less the epoch ends (which have their own);
    ToylensError for a listed step past the run's last."""
    per_epoch = math.ceil(n_train / train.batch_size)
    total = planned_steps(per_epoch, train.epochs, train.max_steps)
    listed: set[int] = set()
    for item in train.checkpoint_steps:
        listed.update(item.steps() if isinstance(item, StepRange) else [item])
    late = sorted(s for s in listed if s > total)
    if late:
        raise ToylensError(f"train.checkpoint_steps: step {late[0]} is past the run's last step ({total})")
    epoch_ends = {*range(0, total + 1, per_epoch), total}
    return per_epoch, total, (log_spaced_steps(train.log_checkpoints, total) | listed) - epoch_ends


def log_spaced_steps(count: int, total_steps: int) -> set[int]:
    """About `count` distinct steps spread log-uniformly over 1..total_steps."""
    if count <= 0 or total_steps <= 0:
        return set()
    points = torch.logspace(0, math.log10(total_steps), count, dtype=torch.float64)
    return {int(round(float(p))) for p in points}


def prepare_run_dir(path: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> RunDir:
    """The run directory for cfg: new, or an existing one when resuming (same config), or wiped.

    The caller holds the run's lock (`toylens.rundir.lock`), which lives in the directory and survives
    --overwrite. A directory that a kill left half-created (a config but no manifest yet) is
    started afresh by --resume."""
    run = RunDir(path)
    leftovers = [p for p in path.iterdir() if p.name != LOCK] if path.is_dir() else []
    if overwrite:
        _remove(leftovers)
    elif run.exists():
        if not resume:
            raise ToylensError(f"{path}: run directory exists; pass --resume to continue it or --overwrite to restart")
        diff = config_diff(run.config(), cfg)
        if diff:
            raise ToylensError(
                f"{path}: config differs from the saved run in {', '.join(diff[:5])}; "
                "use --overwrite to restart with the new config"
            )
        return run
    elif leftovers:
        if not resume:
            raise ToylensError(f"{path}: run directory exists; pass --resume to continue it or --overwrite to restart")
        if not all(p.name == "config.yaml" or p.name.endswith(".tmp") for p in leftovers):
            raise ToylensError(f"{path}: exists but is not a toylens run directory (no manifest.json)")
        log.info("%s: was interrupted while being created; starting it afresh", path)
        _remove(leftovers)
    path.mkdir(parents=True, exist_ok=True)
    run.write_bytes("config.yaml", config_to_yaml(cfg).encode())
    return run


def _remove(paths: list[Path]) -> None:
    for p in paths:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def start_or_resume(
    run: RunDir,
    cfg: RunConfig,
    task: Task,
    model: Transformer,
    opt: torch.optim.Optimizer,
    group: SingleProcess | None = None,
) -> TrainState:
    """Restore the last resumable checkpoint into model and opt, or evaluate and checkpoint the
    initialisation (epoch 0) of a new run. Every rank restores the same checkpoint."""
    group = group or SingleProcess(next(model.parameters()).device)
    resumable = [c for c in run.checkpoints() if c.resumable] if run.exists() else []
    mine = resumable[-1].epoch if resumable else -1
    (main_epoch,) = group.broadcast_ints([mine])
    if float(group.mean(torch.tensor([float(mine != main_epoch)], device=group.device))) > 0:
        raise ToylensError(
            f"{run.path}: rank {group.rank} sees checkpoint epoch {mine}, rank 0 epoch {main_epoch}; "
            "--out must be on a filesystem every rank can read"
        )
    if resumable:
        state = restore_checkpoint(run, resumable[-1].name, model, opt)
        group.on_main(lambda: _truncate_metrics(run, state))
        return state
    state = TrainState()
    torch.manual_seed(cfg.seed)
    group.on_main(lambda: _checkpoint_initialisation(run, cfg, task, model, opt, state))
    return state


def _truncate_metrics(run: RunDir, state: TrainState) -> None:
    """metrics.jsonl as it was at the checkpoint being resumed: later epochs will be redone."""
    if not state.rows:  # a checkpoint written before TrainState kept the rows
        state.rows = [r for r in run.read_jsonl("metrics.jsonl") if r["epoch"] <= state.epoch]
    run.write_jsonl("metrics.jsonl", state.rows)
    log.info("%s: resuming after epoch %d (step %d)", run.path, state.epoch, state.step)


def _checkpoint_initialisation(
    run: RunDir, cfg: RunConfig, task: Task, model: Transformer, opt: torch.optim.Optimizer, state: TrainState
) -> None:
    model.eval()
    row: dict[str, Any] = {"epoch": 0, "step": 0, "wall_s": 0.0}
    for split in task.eval_splits:
        row.update(task.evaluate(model, split, cfg.train.eval_batch_size))
    model.train()
    state.rows = [row]
    run.write_jsonl("metrics.jsonl", state.rows)
    save_checkpoint(run, epoch_name(0), model, cfg, state, opt)


def _fmt(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in row.items() if "/" in k and isinstance(v, float))


def _keys(row: dict) -> str:
    return ", ".join(k for k in row if "/" in k)
