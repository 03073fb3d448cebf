"""List sorting: `[x_1..x_n, SEP, y_1..y_n]` with y = sorted(x), loss on y only.

The model reads `[x_1..x_n, SEP, y_1..y_{n-1}]` (2n tokens) and must predict y_1..y_n at the
positions SEP, y_1..y_{n-1}. Values are 0..n_values-1, SEP is n_values, so d_vocab = n_values + 1
and d_vocab_out = n_values. Lists are drawn from `data_seed` (not the run seed, so runs that
differ only in seed share their data); the test lists are disjoint from the training lists.

Metrics: `loss`, `acc` per sorted output and `list_acc` (whole lists right); the best checkpoint
has the lowest test loss. Outputs are tokens (output i is value i). For patching, the element at
one list position (the same in every example) is replaced by a value not in the list (another
value, with duplicates): one token changes, the sorted half is kept. Answers: the clean sorted
outputs; wrong answers: what a perfect sorter would output for the corrupted list after the same
prefix (the next larger value of the corrupted list); metric: logit_diff.
"""

from __future__ import annotations

import torch
from torch import Tensor

from toylens.config import SortTaskConfig
from toylens.tasks.base import IGNORE, Batch, CorruptedPair, Task, TaskSpec, TensorSplit
from toylens.tasks.registry import register_task


@register_task
class SortTask(Task):
    config_class = SortTaskConfig
    eval_splits = ("test",)
    select_metric = "test/loss"
    metric_goals = {**Task.metric_goals, "list_acc": "max"}
    outputs_are_tokens = True
    patch_metric = "logit_diff"

    def __init__(self, cfg: SortTaskConfig):
        self.cfg = cfg
        self.n, self.sep = cfg.list_len, cfg.n_values
        self.spec = TaskSpec(d_vocab=cfg.n_values + 1, d_vocab_out=cfg.n_values, n_ctx=2 * cfg.list_len)
        lists = distinct_lists(cfg, cfg.n_test + cfg.n_train)
        self.splits = {
            "test": TensorSplit(*self.encode(lists[: cfg.n_test])),
            "train": TensorSplit(*self.encode(lists[cfg.n_test :])),
        }

    def encode(self, lists: Tensor) -> tuple[Tensor, Tensor]:
        """Model inputs and targets for unsorted lists [N, n]."""
        sep = torch.full((lists.shape[0], 1), self.sep, dtype=torch.long)
        seq = torch.cat([lists, sep, lists.sort(dim=1).values], dim=1)  # [N, 2n + 1]
        tokens, targets = seq[:, :-1], seq[:, 1:].clone()
        targets[:, : self.n] = IGNORE  # no loss on predicting the unsorted input or SEP
        return tokens, targets

    def metric_sums(self, logits: Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        sums = super().metric_sums(logits, batch)
        wrong = (logits.argmax(-1) != batch.targets) & batch.mask
        sums["list_acc"] = (float((~wrong.any(-1)).sum()), len(batch))
        return sums

    def data_restrictions(self) -> dict[str, str]:
        return {
            f"output{i}": f"sorted output {i} only (rank {i}, 0 the smallest; predicted at position {self.n + i})"
            for i in range(self.n)
        }

    def keep_targets(self, name: str, batch: Batch) -> Tensor:
        keep = torch.zeros_like(batch.targets, dtype=torch.bool)
        keep[:, self.n + int(name.removeprefix("output"))] = True
        return keep

    def token_labels(self, tokens: Tensor) -> list[str]:
        return ["SEP" if int(t) == self.sep else str(int(t)) for t in tokens]

    def special_tokens(self) -> list[int]:
        return [self.sep]

    def corrupted_pair(self, n: int = 32, seed: int = 0) -> CorruptedPair:
        """Replace the element at one position (the same, random, position in every list) by a
        value that is not in the list; everything else, the sorted half included, stays as it was."""
        gen = torch.Generator().manual_seed(seed)
        split = self.splits[self.eval_splits[0]]
        clean = split.batch(torch.arange(min(n, len(split))))
        lists = clean.tokens[:, : self.n].clone()
        rows = torch.arange(len(lists))
        where = int(torch.randint(self.n, (1,), generator=gen))
        # A random value per row, excluding the values already in the list (or just the replaced one).
        score = torch.rand(len(lists), self.cfg.n_values, generator=gen)
        banned = lists if not self.cfg.duplicates else lists[:, where : where + 1]
        score.scatter_(1, banned, -1.0)
        lists[rows, where] = score.argmax(1)
        corrupted = clean.tokens.clone()
        corrupted[:, : self.n] = lists
        wrong = torch.full_like(clean.targets, IGNORE)
        wrong[:, self.n :] = self.sorter_answers(lists, clean.tokens[:, self.n :])
        return CorruptedPair(
            clean.tokens,
            corrupted,
            clean.targets,
            wrong,
            f"list element {where + 1} replaced by a value not in the list; sorted half unchanged",
        )

    def sorter_answers(self, lists: Tensor, read: Tensor) -> Tensor:
        """What a perfect sorter outputs for `lists` after reading `read` (SEP, then the clean sorted
        outputs): the smallest list value above the value just read (IGNORE if there is none). With
        duplicates, the k-th smallest value at the k-th output instead."""
        if self.cfg.duplicates:
            return lists.sort(1).values
        previous = torch.where(read == self.sep, -1, read)  # [batch, n]
        above = lists[:, None, :] > previous[:, :, None]  # [batch, output, list]
        candidate = torch.where(above, lists[:, None, :], self.cfg.n_values)
        answer = candidate.min(-1).values
        return torch.where(answer == self.cfg.n_values, IGNORE, answer)


def distinct_lists(cfg: SortTaskConfig, count: int) -> Tensor:
    """`count` distinct random lists [count, list_len], deterministic in cfg.data_seed."""
    gen = torch.Generator().manual_seed(cfg.data_seed)
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    chunk = max(1, min(count, (1 << 24) // cfg.n_values))
    while len(out) < count:
        if cfg.duplicates:
            cand = torch.randint(cfg.n_values, (chunk, cfg.list_len), generator=gen)
        else:  # a random permutation's first list_len entries: distinct values in random order
            cand = torch.rand(chunk, cfg.n_values, generator=gen).argsort(dim=1)[:, : cfg.list_len]
        for row in map(tuple, cand.tolist()):
            if row not in seen:
                seen.add(row)
                out.append(row)
                if len(out) == count:
                    break
    return torch.tensor(out, dtype=torch.long)
