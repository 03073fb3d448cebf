"""The trainer's side of a checkpoint: the weights (`rundir.write_weights`) and, beside them, the
trainer state (optimizer moments, RNG, step, best so far, metrics rows) that --resume needs, so a
run resumes bit-identically. What a checkpoint is called and where its files go is `rundir`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from toylens.config import RunConfig
from toylens.errors import ToylensError
from toylens.rundir import RunDir, state_file, weights_file, write_weights
from toylens.train.optim import KERNEL_FLAGS


@dataclass
class TrainState:
    """Where the loop is: epochs done, optimisation steps done, best checkpoint so far."""

    epoch: int = 0
    step: int = 0
    best: dict[str, Any] | None = None
    history: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Every metrics.jsonl row so far: a resume rewrites metrics.jsonl from the checkpoint's rows,
    so rows of epochs after it, or a file that a crash left out of step with the manifest, never
    survive into the resumed run."""


def save_weights(run: RunDir, rel: str, model: nn.Module, cfg: RunConfig, state: TrainState) -> None:
    write_weights(run, rel, model.state_dict(), cfg, epoch=state.epoch, step=state.step)


def save_checkpoint(
    run: RunDir,
    name: str,
    model: nn.Module,
    cfg: RunConfig,
    state: TrainState,
    opt: torch.optim.Optimizer | None = None,
) -> None:
    """Weights (and, with `opt`, the resumable trainer state), then register the checkpoint."""
    if opt is not None:
        tensors, meta = _optimizer_tensors(opt)
        tensors["rng.torch"] = torch.get_rng_state()
        meta["trainer"] = asdict(state)
        run.write_tensors(state_file(name), tensors, meta)
    save_weights(run, weights_file(name), model, cfg, state)
    run.register_checkpoint(name, epoch=state.epoch, step=state.step, resumable=opt is not None)


def restore_checkpoint(run: RunDir, name: str, model: nn.Module, opt: torch.optim.Optimizer) -> TrainState:
    """Load weights and trainer state of checkpoint `name` into model and optimizer."""
    weights, _ = run.read_tensors(weights_file(name))
    model.load_state_dict(weights)
    tensors, meta = run.read_tensors(state_file(name))
    torch.set_rng_state(tensors.pop("rng.torch"))
    state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in tensors.items():
        _, idx, slot = key.split(".", 2)
        state[int(idx)][slot] = value
    # The saved groups carry the saving process's kernel choice (fused on CUDA); keep this one's.
    kernel = [{k: g[k] for k in KERNEL_FLAGS if k in g} for g in opt.param_groups]
    groups = [{**saved, **mine} for saved, mine in zip(meta["param_groups"], kernel)]
    try:  # load_state_dict moves the moments to each parameter's device
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise ToylensError(f"{run.path}/{state_file(name)}: optimizer state does not fit ({e})") from None
    return TrainState(**meta["trainer"])


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, slots in sd["state"].items():
        for slot, value in slots.items():
            tensors[f"optim.{idx}.{slot}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}
