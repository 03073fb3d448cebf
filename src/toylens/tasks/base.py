"""What every task provides: a vocabulary spec, data splits of `Batch`es, a loss and metrics, and
the facts the trainer and the analyses need (see `Task`).

A `Batch` is `tokens [batch, pos]` and `targets [batch, pos]`, with `IGNORE` (-100) wherever no
loss is taken: sorting takes it on the sorted outputs, language modelling everywhere, sentiment
classification at the last real token. One masked cross-entropy therefore trains every task,
and every analysis can read `targets` to know which positions matter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from toylens.config import TaskConfig
from toylens.errors import ToylensError

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


class RestrictedSplit(Split):
    """A split whose batches keep only the targets of one of its task's data restrictions
    (`Task.restrict_targets`); every other target is IGNORE, so the masked loss is the mean over
    the kept targets of each batch (NaN for a batch that keeps none)."""

    def __init__(self, task: Task, split: Split, name: str):
        task.restrict_targets(name, split.batch(torch.arange(min(1, len(split)))))  # unknown name: error now
        self.task, self.split, self.name = task, split, name

    def __len__(self) -> int:
        return len(self.split)

    def batch(self, idx: Tensor) -> Batch:
        return self.task.restrict_targets(self.name, self.split.batch(idx))


@dataclass(frozen=True)
class TaskSpec:
    """What the model must fit: input vocabulary, output vocabulary, sequence length."""

    d_vocab: int
    d_vocab_out: int
    n_ctx: int


Goal = Literal["min", "max"]


@dataclass
class CorruptedPair:
    """Inputs for activation patching: clean and corrupted tokens of the same shape that differ as
    little as possible, the clean answers to measure (IGNORE where nothing is measured) and, when
    the corruption changes the answer, the corrupted answers (what `logit_diff` compares against)."""

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answers: Int[Tensor, "batch pos"]
    wrong: Int[Tensor, "batch pos"] | None
    description: str


class Task(ABC):
    """Data, loss and metrics, and everything the trainer and the analyses need to know about the task.

    A task subclasses this, names its config in `config_class`, sets `spec` and `splits` in
    __init__ and is registered with `register_task` (toylens.tasks.registry). The class attributes
    are facts that the config's name alone decides (so `analyze` knows what applies without building
    the task); the methods answer from the built task.
    """

    name: ClassVar[str]
    """The task's name: its config's `name` (set by `register_task`)."""
    config_class: ClassVar[type[TaskConfig]]
    """The config section that selects this task."""
    spec: TaskSpec
    splits: dict[str, Split]
    train_split = "train"
    eval_splits: tuple[str, ...] = ("test",)
    select_metric = "test/loss"
    """The metric (`split/name`) that picks the best checkpoint, unless `train.select_metric` says."""
    metric_goals: ClassVar[dict[str, Goal]] = {"loss": "min", "acc": "max"}
    """For every metric `metric_sums` and `finalize` report: is lower ("min") or higher ("max") better."""
    outputs_are_tokens: ClassVar[bool] = False
    """Whether output id i is input token i (sorting, language modelling), so that copying scores and
    the "attend to the next output" score mean something; not when the outputs are classes."""
    is_text: ClassVar[bool] = False
    """Whether inputs are tokens of natural-language text with readable labels (lm, classify), so
    that the readings of `analysis.text_heads` (pairs of tokens, punctuation, skip-trigrams) apply."""
    patch_metric: ClassVar[str | None] = None
    """The activation-patching metric for `corrupted_pair`'s inputs (logit_diff, neg_loss or accuracy);
    None: the task has no corrupted inputs, so patching does not apply."""

    @classmethod
    def from_saved(cls, cfg: TaskConfig, saved: dict[str, Any]) -> Task:
        """The task as a run saved it: `saved` holds the JSON files `saved_files` returned when the
        run was trained (read back, checksummed, from the run's `task/` folder). By default the
        config alone builds the task."""
        return cls(cfg)  # type: ignore[call-arg]

    def saved_files(self) -> dict[str, Any]:
        """JSON files (name -> object) to save in the run's `task/` folder, for `from_saved`: what
        the task fitted to its data (e.g. a compact vocabulary) and a loaded run must not refit.
        None by default."""
        return {}

    def loss(self, logits: Float[Tensor, "batch pos d_vocab_out"], batch: Batch) -> Float[Tensor, ""]:
        """The training loss: mean cross-entropy over the positions that have a target."""
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)

    def metric_sums(self, logits: Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """(sum, count) per metric for one batch; averaged over a split by `evaluate`."""
        mask = batch.mask
        n = int(mask.sum())
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE, reduction="sum")
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

    @classmethod
    def goal(cls, metric: str) -> Goal:
        """ "min" or "max": whether lower or higher is better for a metric, with or without its split
        ("val/ppl" or "ppl"). A fact of the class (`metric_goals`), so no task needs to be built."""
        name = metric.split("/", 1)[-1]
        if name not in cls.metric_goals:
            raise ToylensError(
                f"metric {metric!r}: the {cls.name} task does not say whether lower or higher is "
                f"better (its metric_goals: {', '.join(cls.metric_goals)})"
            )
        return cls.metric_goals[name]

    def loss_positions(self) -> Tensor | None:
        """The sequence positions whose logits the loss reads, when they are not all positions: the
        only logits the LLC objective computes. None: every position.

        For the masked cross-entropy of `loss`: the positions where some training example has a
        target, when the training split is held in memory (None otherwise). A task whose `loss`
        reads other logits overrides this."""
        split = self.splits[self.train_split]
        if not isinstance(split, TensorSplit):
            return None
        used = (split.targets != IGNORE).any(0)
        return None if bool(used.all()) else used.nonzero().flatten()

    def data_restrictions(self) -> dict[str, str]:
        """The named subsets of the loss's targets that a data-restricted LLC can sample the loss on
        ({name: what it keeps}); a task that has some overrides this and `keep_targets`."""
        return {}

    def keep_targets(self, name: str, batch: Batch) -> Bool[Tensor, "batch pos"]:
        """Where the data restriction `name` (one of `data_restrictions`) keeps a target of `batch`."""
        raise NotImplementedError(f"{type(self).__name__} names data restrictions but does not apply them")

    def restrict_targets(self, name: str, batch: Batch) -> Batch:
        """`batch` with every target outside the data restriction `name` set to IGNORE."""
        known = self.data_restrictions()
        if name not in known:
            has = f"has {', '.join(known)}" if known else "has none"
            raise ToylensError(f"--data-restrict {name}: no such data restriction (the {self.name} task {has})")
        keep = self.keep_targets(name, batch)
        return Batch(batch.tokens, torch.where(keep, batch.targets, torch.full_like(batch.targets, IGNORE)))

    def token_labels(self, tokens: Tensor) -> list[str]:
        """Readable labels for a 1-D sequence of token ids (for attention views)."""
        return [str(int(t)) for t in tokens]

    def output_labels(self) -> list[str]:
        """Names of the output ids: their token labels when outputs are tokens, else "class i"."""
        if self.outputs_are_tokens:
            return self.token_labels(torch.arange(self.spec.d_vocab_out))
        return [f"class {i}" for i in range(self.spec.d_vocab_out)]

    def special_tokens(self) -> list[int]:
        """Input ids that are not content (SEP, BOS, padding, end-of-text), sorted; none by default."""
        return []

    def boundary_tokens(self) -> list[int]:
        """Input ids that mark where a text starts or ends (end-of-text, [CLS], [SEP], padding,
        BOS), sorted: what a "BOS head" attends to. By default `special_tokens` and `bos_token`."""
        bos = self.bos_token()
        return sorted(set(self.special_tokens()) | ({bos} if bos is not None else set()))

    def baselines(self) -> dict[str, float]:
        """Reference values of the task's metrics that need no model (e.g. `test/unigram_loss`),
        computed once when training finishes and saved in the run's summary.json. None by default."""
        return {}

    def bos_token(self) -> int | None:
        """What a sequence of random tokens starts with; None: position 0 is one more random token."""
        return None

    def random_token_ids(self) -> Int[Tensor, " ids"]:
        """The ids random sequences are drawn from: the input vocabulary without `special_tokens`."""
        ids = torch.arange(self.spec.d_vocab)
        return ids[~torch.isin(ids, torch.tensor(self.special_tokens(), dtype=torch.long))]

    def corrupted_pair(self, n: int = 32, seed: int = 0) -> CorruptedPair:
        """`n` clean inputs and their corrupted versions, for activation patching with `patch_metric`.
        A task that sets `patch_metric` overrides this."""
        raise ToylensError(f"the {self.name} task has no corrupted inputs, so activation patching does not apply")
