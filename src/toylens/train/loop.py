"""The training loop: config -> run directory with metrics and checkpoints.

    from toylens import train
    result = train("configs/sort-no-decay.yaml", out="runs")

One AdamW step per batch on the task's loss plus the L1 penalty; an evaluation and a resumable
checkpoint after every epoch (epoch 0 is the initialisation). Data order comes from a generator
seeded by (seed, epoch), so resuming from the last epoch checkpoint replays the interrupted epoch
exactly and the final weights are bit-identical to an uninterrupted run on CPU.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from toylens.config import RunConfig, config_diff, config_to_yaml, load_config
from toylens.errors import ToylensError, TrainingDiverged
from toylens.model import Transformer
from toylens.run import RunDir
from toylens.storage import remove_stale_temp_files
from toylens.tasks import Task, build_task
from toylens.train.checkpoint import TrainState, restore_checkpoint, save_checkpoint, save_weights
from toylens.train.optim import build_optimizer, lr_at, set_lr
from toylens.train.regularisers import L1Penalty

log = logging.getLogger("toylens")


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    best: dict[str, Any] | None
    wall_s: float


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else must be a usable torch device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ToylensError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ToylensError(f"--device {device!r}: CUDA is not available on this machine")
    return dev


def train(
    config: RunConfig | str | Path,
    out: str | Path = "runs",
    *,
    overrides: tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train the run a config describes into `out/<name>`; see the module docstring."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    task = build_task(cfg.task)
    cfg = cfg.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx)
    run = _prepare_run_dir(Path(out) / cfg.name, cfg, resume, overwrite)
    if run.has("summary.json"):
        log.info("%s: already complete", run.path)
        summary = run.read_json("summary.json")
        return TrainResult(run.path, summary["final"], summary["best"], summary["wall_s"])
    dev = resolve_device(device)
    model = Transformer(cfg.model, seed=cfg.seed).to(dev)
    opt = build_optimizer(model, cfg.train)
    state = _start_or_resume(run, cfg, task, model, opt)
    return Trainer(cfg, task, model, opt, run, state, progress).fit()


class Trainer:
    """Runs the remaining epochs of one run; one method per stage of an epoch."""

    def __init__(self, cfg: RunConfig, task: Task, model: Transformer, opt: torch.optim.Optimizer,
                 run: RunDir, state: TrainState, progress: bool):
        self.cfg, self.task, self.model, self.opt, self.run, self.state = cfg, task, model, opt, run, state
        self.device = next(model.parameters()).device
        self.data = task.splits[task.train_split]
        self.steps_per_epoch = math.ceil(len(self.data) / cfg.train.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        epoch_ends = range(0, self.total_steps + 1, self.steps_per_epoch)
        self.log_steps = log_spaced_steps(cfg.train.log_checkpoints, self.total_steps) - set(epoch_ends)
        self.penalty = L1Penalty(cfg.train.l1)
        self.select = cfg.train.select_metric or task.select_metric
        self.bar = tqdm(total=self.total_steps, initial=state.step, desc=cfg.name, unit="step",
                        disable=not progress, dynamic_ncols=True, mininterval=0.5)

    def fit(self) -> TrainResult:
        start = time.perf_counter() - self.state.history.get("wall_s", 0.0)
        with self.bar:
            while self.state.epoch < self.cfg.train.epochs:
                train_metrics = self.train_epoch()
                self.state.epoch += 1
                self.state.history["wall_s"] = time.perf_counter() - start
                row = self.evaluate(train_metrics)
                save_checkpoint(self.run, f"epoch-{self.state.epoch:04d}", self.model, self.cfg, self.state, self.opt)
                self.bar.set_postfix(epoch=self.state.epoch, **{k: f"{v:.4g}" for k, v in row.items() if "/" in k})
        wall = time.perf_counter() - start
        save_weights(self.run, "final.safetensors", self.model, self.cfg, self.state)
        final = self.run.read_jsonl("metrics.jsonl")[-1]
        self.run.write_json("summary.json", {
            "final": final, "best": self.state.best, "wall_s": wall, "epochs": self.state.epoch,
            "steps": self.state.step, "device": str(self.device), "torch": torch.__version__,
        })
        log.info("%s: done in %.1fs; %s", self.run.path, wall, _fmt(final))
        return TrainResult(self.run.path, final, self.state.best, wall)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split in this epoch's order; mean task loss and L1 penalty."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.state.epoch)
        order = torch.randperm(len(self.data), generator=gen)
        sums = torch.zeros(2, device=self.device)  # task loss, L1 penalty
        tokens, t0 = 0, time.perf_counter()
        for i, idx in enumerate(order.split(self.cfg.train.batch_size)):
            sums += self.step(self.data.batch(idx).to(self.device))
            tokens += idx.numel() * self.cfg.model.n_ctx
            if self.state.step in self.log_steps:
                self._check_finite(sums)
                save_checkpoint(self.run, f"step-{self.state.step:06d}", self.model, self.cfg, self.state)
            if i % 20 == 0:
                self._check_finite(sums)
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                self.bar.set_postfix(epoch=self.state.epoch + 1, loss=f"{float(sums[0]) / (i + 1):.4f}",
                                     tok_s=f"{rate:.3g}", refresh=False)
        self._check_finite(sums)
        loss, l1 = (sums / self.steps_per_epoch).tolist()
        return {"train/loss": loss, "train/l1": l1} if self.penalty.fwd_hooks else {"train/loss": loss}

    def step(self, batch: Any) -> torch.Tensor:
        """One optimisation step; returns [task loss, L1 penalty] (detached)."""
        set_lr(self.opt, lr_at(self.state.step, self.total_steps, self.cfg.train))
        with self.model.hooks(self.penalty.fwd_hooks):
            logits = self.model(batch.tokens)
        loss = self.task.loss(logits, batch)
        l1 = self.penalty.take().to(self.device)
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
        self.run.append_jsonl("metrics.jsonl", row)
        if self.select not in row:
            raise ToylensError(f"train.select_metric: {self.select!r} is not a metric of this task ({_keys(row)})")
        value = row[self.select]
        better = value < self.state.best["value"] if self.state.best else True
        if not self.select.endswith("loss") and self.state.best:
            better = value > self.state.best["value"]
        if better:
            self.state.best = {"checkpoint": f"epoch-{self.state.epoch:04d}", "metric": self.select, "value": value}
        log.info("epoch %d: %s", self.state.epoch, _fmt(row))
        return row

    def _check_finite(self, sums: torch.Tensor) -> None:
        if not torch.isfinite(sums).all():
            last = f"epoch-{self.state.epoch:04d}"
            raise TrainingDiverged(
                f"{self.cfg.name}: loss became {float(sums.sum())} in epoch {self.state.epoch + 1} "
                f"(step {self.state.step}); stopped, the last good checkpoint is {self.run.path}/checkpoints/{last}.safetensors"
            )


def log_spaced_steps(count: int, total_steps: int) -> set[int]:
    """About `count` distinct steps spread log-uniformly over 1..total_steps."""
    if count <= 0 or total_steps <= 0:
        return set()
    points = torch.logspace(0, math.log10(total_steps), count, dtype=torch.float64)
    return {int(round(float(p))) for p in points}


def _prepare_run_dir(path: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> RunDir:
    run = RunDir(path)
    if run.exists() or (path.exists() and any(path.iterdir())):
        if overwrite:
            shutil.rmtree(path)
        elif not resume:
            raise ToylensError(f"{path}: run directory exists; pass --resume to continue it or --overwrite to restart")
        elif run.exists():
            saved = run.config()
            diff = config_diff(saved, cfg)
            if diff:
                raise ToylensError(f"{path}: config differs from the saved run in {', '.join(diff[:5])}; "
                                   "use --overwrite to restart with the new config")
            remove_stale_temp_files(path)
            return run
        else:
            raise ToylensError(f"{path}: exists but is not a toylens run directory (no manifest.json)")
    path.mkdir(parents=True, exist_ok=True)
    run.write_bytes("config.yaml", config_to_yaml(cfg).encode())
    return run


def _start_or_resume(run: RunDir, cfg: RunConfig, task: Task, model: Transformer, opt: torch.optim.Optimizer) -> TrainState:
    resumable = [c for c in run.checkpoints() if c.resumable]
    if resumable:
        last = resumable[-1]
        state = restore_checkpoint(run, last.name, model, opt)
        rows = [r for r in run.read_jsonl("metrics.jsonl") if r["epoch"] <= state.epoch]
        run.write_jsonl("metrics.jsonl", rows)
        log.info("%s: resuming after epoch %d (step %d)", run.path, state.epoch, state.step)
        return state
    state = TrainState()
    torch.manual_seed(cfg.seed)
    model.eval()
    row: dict[str, Any] = {"epoch": 0, "step": 0, "wall_s": 0.0}
    for split in task.eval_splits:
        row.update(task.evaluate(model, split, cfg.train.eval_batch_size))
    model.train()
    run.write_jsonl("metrics.jsonl", [row])
    save_checkpoint(run, "epoch-0000", model, cfg, state, opt)
    return state


def _fmt(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in row.items() if "/" in k and isinstance(v, float))


def _keys(row: dict) -> str:
    return ", ".join(k for k in row if "/" in k)
