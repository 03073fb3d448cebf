"""What every task provides: a vocabulary spec, data splits of `Batch`es, a loss and metrics.

A `Batch` is `tokens [batch, pos]` and `targets [batch, pos]`, with `IGNORE` (-100) wherever no
loss is taken: sorting takes it on the sorted outputs, language modelling everywhere, sentiment
classification at the last real token. One masked cross-entropy therefore trains every task,
and every analysis can read `targets` to know which positions matter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

IGNORE = -100
LOGITS_BUDGET = 2**25  # elements of one evaluation batch's logits (128 MB in float32)


@dataclass
class Batch:
    tokens: Int[Tensor, "batch pos"]
    targets: Int[Tensor, "batch pos"]

    @property
    def mask(self) -> Tensor:
        """Where the loss is taken."""
        return self.targets != IGNORE

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.tokens.to(device, non_blocking=True), self.targets.to(device, non_blocking=True))

    def __len__(self) -> int:
        return self.tokens.shape[0]


class Split(ABC):
    """A fixed, indexable set of sequences."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def batch(self, idx: Tensor) -> Batch:
        """The sequences at the given indices (a 1-D long tensor)."""


class TensorSplit(Split):
    """A split held in memory as two tensors."""

    def __init__(self, tokens: Tensor, targets: Tensor):
        self.tokens, self.targets = tokens, targets

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, idx: Tensor) -> Batch:
        return Batch(self.tokens[idx], self.targets[idx])


@dataclass(frozen=True)
class TaskSpec:
    """What the model must fit: input vocabulary, output vocabulary, sequence length."""

    d_vocab: int
    d_vocab_out: int
    n_ctx: int


class Task(ABC):
    """Data plus loss and metrics. Subclasses set `spec` and `splits` in __init__."""

    name: str
    spec: TaskSpec
    splits: dict[str, Split]
    train_split = "train"
    eval_splits: tuple[str, ...] = ("test",)
    select_metric = "test/loss"

    def loss(
        self, logits: Float[Tensor, "batch pos d_vocab_out"], batch: Batch
    ) -> Float[Tensor, ""]:
        """The training loss: mean cross-entropy over the positions that have a target."""
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)

    def metric_sums(self, logits: Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """(sum, count) per metric for one batch; averaged over a split by `evaluate`."""
        mask = batch.mask
        n = int(mask.sum())
        loss = F.cross_entropy(
            logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        correct = (logits.argmax(-1) == batch.targets) & mask
        return {"loss": (float(loss), n), "acc": (float(correct.sum()), n)}

    def finalize(self, metrics: dict[str, float]) -> dict[str, float]:
        """Derived metrics from the averaged ones (e.g. perplexity); identity by default."""
        return metrics

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str, batch_size: int = 1024) -> dict[str, float]:
        """Average every metric over a whole split; keys are prefixed `split/`.

        Batches are cut further so that one batch's logits stay under LOGITS_BUDGET elements
        (a batch of 256 windows of 128 GPT-2 tokens would otherwise need 6.6 GB of logits and as
        much again for the loss); the averages do not depend on the batch size.
        """
        device = next(model.parameters()).device
        data = self.splits[split]
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        cfg = getattr(model, "cfg", None) or getattr(getattr(model, "module", None), "cfg", None)  # DDP wraps
        if cfg is not None and len(data) > 0:
            row_logits = data.batch(torch.arange(1)).tokens.numel() * cfg.d_vocab_out
            batch_size = max(1, min(batch_size, LOGITS_BUDGET // row_logits))
        for idx in torch.arange(len(data)).split(batch_size):
            batch = data.batch(idx).to(device)
            for key, (s, n) in self.metric_sums(model(batch.tokens), batch).items():
                sums[key][0] += s
                sums[key][1] += n
        means = self.finalize({k: s / max(n, 1) for k, (s, n) in sums.items()})
        return {f"{split}/{k}": v for k, v in means.items()}

    def token_labels(self, tokens: Tensor) -> list[str]:
        """Readable labels for a 1-D sequence of token ids (for attention views)."""
        return [str(int(t)) for t in tokens]
