"""Callbacks: how loggers (W&B, or your own) see a run without the trainer knowing about them.

    class PrintLoss(TrainCallback):
        def on_epoch_end(self, row):
            print(row["epoch"], row["test/loss"])

    train("configs/sort-no-decay.yaml", callbacks=[PrintLoss()])

The trainer calls these on the process that writes the run directory (rank 0 under torchrun),
for every member of an ensemble separately, in this order: `on_train_start` once (also when
resuming), `on_epoch_end` after each epoch's evaluation and checkpoint, then `on_train_end` with
the summary, or `on_train_error` if training stops with an exception (including Ctrl-C).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toylens.config import RunConfig
    from toylens.rundir import RunDir
    from toylens.train.state import TrainState


class TrainCallback:
    """Base class with no-op hooks; override the ones you need."""

    def on_train_start(self, cfg: RunConfig, run: RunDir, state: TrainState) -> None:
        """Training (re)starts at `state.epoch`; `cfg` is the resolved config."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """`row` is the metrics line just appended to metrics.jsonl (epoch, step, split/metric...)."""

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """`summary` is what was written to summary.json (final and best metrics, wall time)."""

    def on_train_error(self, error: BaseException) -> None:
        """Training stopped with `error`; the run directory keeps its last good checkpoint."""
