"""Induction: random tokens in which a segment of random length reappears at a random later offset.

Each sequence is `[BOS, x_1..x_n]` (n = seq_len) with x drawn uniformly from 0..n_vocab-1, except
that one segment `x[s : s+L]` is copied to `x[d : d+L]` with `d >= s + L`. L, s and d are drawn per
sequence, so the only way to predict the copy is in context: find the earlier occurrence of the
current token and predict what followed it (an induction head). A fixed offset would let the model
learn a positional shortcut instead.

The model reads `[BOS, x_1..x_{n-1}]` (n_ctx = seq_len) and predicts `x_1..x_n`. The loss is taken
on every position by default, as in the field; `loss_on: copied` keeps only the positions the
copy makes predictable (x_{d+1}..x_{d+L-1}). Metrics: `loss`/`acc` over the loss positions and
`copy_loss`/`copy_acc` over the predictable ones, where the phase change shows.

Sequences are generated on the fly from a counter-based hash of (data_seed, split, index), so any
number of them costs no memory, sequence i is the same whatever n_train is, and the test stream
is a different stream from the training one. `repeated_tokens` builds the `[BOS, r, r]` inputs
that induction scores are measured on; patching breaks such a sequence of the same length
(`tasks.repeated`, halves of 50 tokens) and measures neg_loss on its second half.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from toylens.config import InductionTaskConfig
from toylens.errors import ToylensError
from toylens.tasks.base import IGNORE, Batch, CorruptedPair, Split, Task, TaskSpec
from toylens.tasks.registry import register_task
from toylens.tasks.repeated import repeated_pair

_SPLIT_KEYS = {"train": 1, "test": 2}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class InductionBatch(Batch):
    """A Batch that also marks the positions whose target the copy makes predictable."""

    copied: Bool[Tensor, "batch pos"]

    def to(self, device: torch.device | str) -> InductionBatch:
        moved = super().to(device)
        return InductionBatch(moved.tokens, moved.targets, self.copied.to(device, non_blocking=True))


class InductionSplit(Split):
    """`size` sequences generated from (data_seed, split) on request."""

    def __init__(self, cfg: InductionTaskConfig, split: str, size: int):
        self.cfg, self.size = cfg, size
        self.key = _splitmix64(_splitmix64(np.array([cfg.data_seed], dtype=np.uint64)) ^ np.uint64(_SPLIT_KEYS[split]))

    def __len__(self) -> int:
        return self.size

    def batch(self, idx: Tensor) -> InductionBatch:
        seq, copied = induction_sequences(self.cfg, self.key, idx.cpu().numpy().astype(np.uint64))
        tokens, targets = seq[:, :-1], seq[:, 1:].clone()
        if self.cfg.loss_on == "copied":
            targets[~copied] = IGNORE
        return InductionBatch(tokens, targets, copied)


@register_task
class InductionTask(Task):
    config_class = InductionTaskConfig
    eval_splits = ("test",)
    select_metric = "test/loss"
    metric_goals = {**Task.metric_goals, "copy_loss": "min", "copy_acc": "max"}
    outputs_are_tokens = True
    patch_metric = "neg_loss"

    def data_restrictions(self) -> dict[str, str]:
        return {
            "copied": "the positions whose next token the repeat makes predictable (inside the copy)",
            "uncopied": "every other position (its next token is random)",
        }

    def keep_targets(self, name: str, batch: Batch) -> Tensor:
        if not isinstance(batch, InductionBatch):
            raise ToylensError(f"--data-restrict {name}: needs the induction task's own batches")
        return batch.copied if name == "copied" else ~batch.copied

    def __init__(self, cfg: InductionTaskConfig):
        self.cfg = cfg
        self.bos = cfg.n_vocab
        self.spec = TaskSpec(d_vocab=cfg.n_vocab + 1, d_vocab_out=cfg.n_vocab, n_ctx=cfg.seq_len)
        self.splits = {
            "train": InductionSplit(cfg, "train", cfg.n_train),
            "test": InductionSplit(cfg, "test", cfg.n_test),
        }

    def metric_sums(self, logits: Float[Tensor, "batch pos d_vocab_out"], batch: Batch) -> dict[str, tuple[float, int]]:
        sums = super().metric_sums(logits, batch)
        copied = batch.copied  # type: ignore[attr-defined]
        n = int(copied.sum())
        logp = logits.log_softmax(-1)
        target = batch.targets.clamp(min=0).unsqueeze(-1)
        nll = -logp.gather(-1, target).squeeze(-1)
        right = logits.argmax(-1) == batch.targets
        sums["copy_loss"] = (float(nll[copied].sum()), n)
        sums["copy_acc"] = (float(right[copied].sum()), n)
        return sums

    def token_labels(self, tokens: Tensor) -> list[str]:
        return ["BOS" if int(t) == self.bos else str(int(t)) for t in tokens]

    def special_tokens(self) -> list[int]:
        return [self.bos]

    def bos_token(self) -> int:
        return self.bos

    def corrupted_pair(self, n: int = 32, seed: int = 0) -> CorruptedPair:
        """Repeated random tokens with the first half replaced (`tasks.repeated`), halves of 50
        tokens (fewer when n_ctx is short): the sequences the induction head scores are measured
        on (why 50: `tasks.repeated.HALF`)."""
        return repeated_pair(self, n, seed)

    def repeated_tokens(self, n_seq: int, length: int, seed: int = 0) -> Int[Tensor, "batch pos"]:
        """`[BOS, r_1..r_length, r_1..r_length]` with r uniform over 0..n_vocab-1 (for induction scores)."""
        gen = torch.Generator().manual_seed(seed)
        r = torch.randint(self.cfg.n_vocab, (n_seq, length), generator=gen)
        bos = torch.full((n_seq, 1), self.bos, dtype=torch.long)
        return torch.cat([bos, r, r], dim=1)


def induction_sequences(
    cfg: InductionTaskConfig, key: np.ndarray, index: np.ndarray
) -> tuple[Int[Tensor, "batch seq"], Bool[Tensor, "batch pos"]]:
    """Sequences `[BOS, x_1..x_n]` for the given indices of one stream, and the mask over target
    positions 0..n-1 (target x_{p+1}) that the copy makes predictable."""
    n, (lo, hi) = cfg.seq_len, cfg.segment_len
    row = _splitmix64(key ^ _splitmix64(index))  # one 64-bit key per sequence
    draws = _splitmix64(row[:, None] + _GOLDEN * np.arange(1, n + 4, dtype=np.uint64))  # [batch, n + 3]
    length = lo + (draws[:, 0] % np.uint64(hi - lo + 1)).astype(np.int64)
    src = 1 + (draws[:, 1] % (n - 2 * length + 1).astype(np.uint64)).astype(np.int64)  # x index
    dst = src + length + (draws[:, 2] % (n - src - 2 * length + 2).astype(np.uint64)).astype(np.int64)
    x = torch.from_numpy((draws[:, 3:] % np.uint64(cfg.n_vocab)).astype(np.int64))  # x_1..x_n
    seq = torch.cat([torch.full((len(index), 1), cfg.n_vocab, dtype=torch.long), x], dim=1)  # [batch, n + 1]
    pos = torch.arange(n + 1)
    length_t, src_t, dst_t = (torch.from_numpy(a)[:, None] for a in (length, src, dst))
    in_copy = (pos >= dst_t) & (pos < dst_t + length_t)
    source = torch.where(in_copy, src_t + pos - dst_t, pos)  # where each position reads from
    seq = seq.gather(1, source)
    # Target x_{p+1} is predictable by induction when x_p and x_{p+1} are both in the copy.
    target_pos = pos[1:]
    copied = (target_pos > dst_t) & (target_pos < dst_t + length_t)
    return seq, copied


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective 64-bit mix (uint64 arithmetic wraps by design)."""
    x = (x + _GOLDEN).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
