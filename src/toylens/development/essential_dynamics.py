"""Essential dynamics: the PCA of a model's outputs on a fixed probe set, one row per checkpoint.

    from toylens.development import essential_dynamics
    ed = essential_dynamics(RunDir("runs/induction-2l"))   # -> RUN/development/essential_dynamics
    ed.projections[:, :2], ed.explained_variance[:3], ed.loss

A fixed probe set (the first `n_probe` examples of a seeded permutation of the task's evaluation
split) goes through the model at every checkpoint; the model's log-probabilities (log-softmax of
the logits, so that the free shift of each position's logits does not count as change) at every
position with a target are flattened into one row per checkpoint. The rows are centred (the mean
over checkpoints subtracted) and decomposed by SVD in float64: the trajectory is each checkpoint's
coordinates on the first principal components, the explained variance each component's share of
the total. The probe loss (mean cross-entropy on the same tokens) comes with it, at every
checkpoint: a loss curve as finely resolved as the checkpoints, where metrics.jsonl has one point
per epoch. It is recomputed only when the checkpoints or the probe set changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from toylens.device import DeviceLike, resolve_device
from toylens.rundir import CheckpointInfo, RunDir, load, read_weights
from toylens.rundir.results import Result, has_result, load_result
from toylens.tasks.base import IGNORE

ED_PATH = "development/essential_dynamics"
N_PROBE = 32
N_COMPONENTS = 5


@dataclass
class EssentialDynamics(Result):
    """PCA of the model's log-probs on a fixed probe set, one row per checkpoint."""

    checkpoints: list[str]
    steps: list[int]
    projections: Float[Tensor, "checkpoint component"]
    """Each checkpoint's coordinates on the first principal components (PC1 first)."""
    explained_variance: Float[Tensor, " all_components"]
    """Each component's share of the total variance across checkpoints (all components; sums to 1)."""
    loss: Float[Tensor, " checkpoint"]
    """Mean cross-entropy on the probe tokens at each checkpoint."""
    n_probe: int
    seed: int
    n_features: int
    """Length of a row: probe positions with a target x output vocabulary."""
    outputs: str = "log-probs"
    probe: str = ""
    axes: ClassVar[dict[str, tuple[str, ...]]] = {
        "projections": ("checkpoint", "component"),
        "explained_variance": ("all_components",),
        "loss": ("checkpoint",),
    }


def pca(rows: Float[Tensor, "n features"], k: int = N_COMPONENTS) -> tuple[Tensor, Tensor]:
    """(projections [n, min(k, n)], explained variance ratio [n]) of the rows centred on their mean,
    by SVD in float64. Each component's sign is fixed so that its largest |projection| is positive."""
    x = rows.double()
    x = x - x.mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)  # [n, r], [r]
    proj = u[:, :k] * s[:k]
    proj = proj * torch.sign(proj.gather(0, proj.abs().argmax(0, keepdim=True)))
    var = s**2
    total = var.sum()
    return proj, (var / total if total > 0 else var)


def probe_outputs(
    run: RunDir, checkpoints: list[CheckpointInfo], n_probe: int, seed: int, device: DeviceLike
) -> tuple[Tensor, Tensor, str]:
    """(rows [checkpoint, features] of log-probs as float32, probe loss per checkpoint, description)."""
    dev = resolve_device(device)
    loaded = load(run, checkpoints[0].name, dev)
    task, model = loaded.task, loaded.model
    split_name = task.eval_splits[0]
    split = task.splits[split_name]
    n = min(n_probe, len(split))
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    batch = split.batch(idx.sort().values).to(dev)
    mask = batch.targets != IGNORE  # positions with a target
    rows, losses = [], []
    names = list(model.state_dict())
    model.eval()
    for ckpt in checkpoints:
        tensors, _ = read_weights(run, ckpt)
        model.load_state_dict({k: tensors[k] for k in names})
        with torch.no_grad():
            logp = F.log_softmax(model(batch.tokens).double(), -1)  # [batch, pos, d_vocab_out]
        picked = logp[mask]  # [positions with a target, d_vocab_out]
        losses.append(float(-picked.gather(1, batch.targets[mask][:, None]).mean()))
        rows.append(picked.flatten().float().cpu())
    text = f"{n} examples of the {task.name} task's {split_name} split (seed {seed}), {int(mask.sum())} positions"
    return torch.stack(rows), torch.tensor(losses, dtype=torch.float64), text


def essential_dynamics(
    run: RunDir, *, n_probe: int = N_PROBE, seed: int = 0, device: DeviceLike = "auto"
) -> EssentialDynamics:
    """Essential dynamics of every checkpoint of `run` (module docstring), saved at
    RUN/development/essential_dynamics (skipped when saved for the same checkpoints and probe set)."""
    ckpts = run.checkpoints()
    if has_result(run, ED_PATH):
        done = load_result(run, ED_PATH)
        if (
            isinstance(done, EssentialDynamics)
            and done.checkpoints == [c.name for c in ckpts]
            and (done.n_probe, done.seed) == (n_probe, seed)
        ):
            return done
    rows, loss, text = probe_outputs(run, ckpts, n_probe, seed, device)
    proj, var = pca(rows)
    result = EssentialDynamics(
        checkpoints=[c.name for c in ckpts],
        steps=[c.step for c in ckpts],
        projections=proj.float(),
        explained_variance=var.float(),
        loss=loss.float(),
        n_probe=n_probe,
        seed=seed,
        n_features=rows.shape[1],
        probe=text,
    )
    result.save(run, ED_PATH)
    return result
