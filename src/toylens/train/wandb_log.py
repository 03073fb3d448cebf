"""Weights & Biases logging as a training callback (extra: `pip install 'toylens[wandb]'`).

    from toylens.train.wandb_log import WandbLogger
    train("configs/sort-no-decay.yaml", callbacks=[WandbLogger(project="sorting", group="wd-sweep")])

Logs the resolved config, one history row per epoch (at the optimisation step, so curves line up
across runs with different batch sizes), and the final/best metrics in the run summary. The W&B
run id is kept in the run directory (`wandb.json`), so a resumed run continues the same W&B run.
`WANDB_MODE=offline` works with no account: W&B writes under `dir` (default: the folder holding
the run directory) and `wandb sync` uploads it later.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from toylens.config import RunConfig
from toylens.errors import ToylensError
from toylens.rundir import RunDir
from toylens.train.callbacks import TrainCallback
from toylens.train.state import TrainState


class WandbLogger(TrainCallback):
    """One W&B run per toylens run; several can be live in one process (ensemble members)."""

    def __init__(
        self,
        project: str = "toylens",
        *,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        dir: str | Path | None = None,
    ):
        try:
            import wandb
        except ImportError:
            raise ToylensError("--wandb: the wandb package is not installed (pip install 'toylens[wandb]')") from None
        self._wandb = wandb
        self.project, self.entity, self.group, self.tags, self.dir = project, entity, group, list(tags), dir
        self.run: Any = None

    def on_train_start(self, cfg: RunConfig, run: RunDir, state: TrainState) -> None:
        ids = run.read_json("wandb.json") if run.has("wandb.json") else {"id": secrets.token_hex(6)}
        if not run.has("wandb.json"):
            run.write_json("wandb.json", ids)
        folder = Path(self.dir) if self.dir is not None else run.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        self.run = self._wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group,
            tags=self.tags,
            name=cfg.name,
            id=ids["id"],
            resume="allow",
            config=cfg.model_dump(mode="json"),
            dir=str(folder),
            job_type="train",
            reinit="create_new",
        )
        if state.epoch == 0:  # the evaluation at initialisation happened before training started
            for row in run.read_jsonl("metrics.jsonl"):
                self.on_epoch_end(row)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def on_train_end(self, summary: dict[str, Any]) -> None:
        best = summary.get("best") or {}
        self.run.summary.update(
            {
                "best/" + best.get("metric", "value"): best.get("value"),
                "best/checkpoint": best.get("checkpoint"),
                "wall_s": summary["wall_s"],
            }
        )
        self.run.finish()
        self.run = None

    def on_train_error(self, error: BaseException) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None
