"""Sequence classification (IMDB sentiment): the label is predicted at the last real token.

Each review is tokenized alone (with the tokenizer's [CLS]/[SEP] for BERT), truncated to its first
n_ctx tokens (keeping a trailing [SEP]), and right-padded to the longest review in the batch. The
only target is the label, at the review's last real token; every other position is IGNORE. Under
causal attention that position never sees the pads after it, so padding cannot change the
prediction. The model is the same Transformer as for language modelling, with d_vocab_out = the
number of classes, so every analysis runs on it unchanged.

Splits: `train`; `val`, a seeded val_fraction of the training reviews (or the data's validation
split), which picks the best checkpoint (`val/acc`); and `test`, never used for any choice.
Metrics: `loss` and `acc` per review.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from toylens.config import ClassifyTaskConfig
from toylens.errors import ToylensError
from toylens.tasks.base import IGNORE, Batch, Split, Task, TaskSpec
from toylens.tasks.sources import open_source
from toylens.tasks.token_cache import TokenArrays, Tokenization, tokenized_split
from toylens.tasks.tokenizers import load_tokenizer

log = logging.getLogger("toylens")


class ReviewSplit(Split):
    """Some rows of a tokenized split, each truncated to n_ctx and right-padded in its batch."""

    def __init__(self, arrays: TokenArrays, rows: np.ndarray, n_ctx: int, pad_id: int, suffix: list[int]):
        self.arrays, self.rows, self.n_ctx, self.pad_id = arrays, rows, n_ctx, pad_id
        self.suffix = np.asarray(suffix, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: Tensor) -> Batch:
        rows = self.rows[idx.numpy()]
        starts, ends = self.arrays.offsets[rows], self.arrays.offsets[rows + 1]
        lengths = np.minimum(ends - starts, self.n_ctx)
        width = int(lengths.max()) if len(rows) else 1
        tokens = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        for i, (start, end, length) in enumerate(zip(starts, ends, lengths)):
            tokens[i, :length] = self.arrays.tokens[start : start + length]
            if end - start > self.n_ctx and len(self.suffix):  # truncated: keep the closing [SEP]
                tokens[i, length - len(self.suffix) : length] = self.suffix
        targets = np.full_like(tokens, IGNORE)
        targets[np.arange(len(rows)), lengths - 1] = self.arrays.labels[rows]
        return Batch(torch.from_numpy(tokens), torch.from_numpy(targets))


class ClassifyTask(Task):
    name = "classify"
    eval_splits = ("val", "test")
    select_metric = "val/acc"

    def __init__(self, cfg: ClassifyTaskConfig):
        self.cfg = cfg
        self.tokenizer = tok = load_tokenizer(cfg.tokenizer)
        source = open_source(cfg)
        log.info("data: %s", source.description)
        if "train" not in source.splits:
            raise ToylensError(f"task: {source.description} has no train split")

        def rows(split: str, limit: int | None) -> TokenArrays:
            how = Tokenization("rows", cfg.text_column, cfg.label_column, documents=True, max_examples=limit,
                               seed=cfg.data_seed)
            return tokenized_split(cfg.cache_dir, split, source.splits[split], tok, how)

        train = rows("train", cfg.max_examples)
        if train.n_rows == 0:
            raise ToylensError(f"task: empty corpus: the train split of {source.description} has no text")
        order = np.random.default_rng(cfg.data_seed).permutation(train.n_rows)
        held: dict[str, np.ndarray] = {}
        for split, hub_name, fraction in (("test", "test", cfg.test_fraction), ("val", "validation", cfg.val_fraction)):
            if hub_name not in source.splits:
                count = max(1, round(train.n_rows * fraction))
                held[split], order = np.sort(order[:count]), order[count:]
        if len(order) == 0:
            raise ToylensError("task: too few training reviews left after holding out val/test")
        arrays = {"train": train} | {s: rows(h, cfg.max_eval_examples) for s, h in (("val", "validation"), ("test", "test"))
                                     if s not in held}
        self.class_names = source.class_names or [str(i) for i in range(int(train.labels.max()) + 1)]
        n_classes = len(self.class_names)
        self.spec = TaskSpec(d_vocab=tok.vocab_size, d_vocab_out=n_classes, n_ctx=cfg.n_ctx)
        self.splits = {"train": ReviewSplit(train, np.sort(order), cfg.n_ctx, tok.pad_id, tok.suffix_ids)}
        for split in ("val", "test"):
            data = train if split in held else arrays[split]
            chosen = held[split] if split in held else np.arange(data.n_rows)
            if data.n_rows and int(data.labels.max()) >= n_classes:
                raise ToylensError(f"task.label_column: the {split} split has label {int(data.labels.max())}; "
                                   f"the classes are {self.class_names}")
            self.splits[split] = ReviewSplit(data, chosen, cfg.n_ctx, tok.pad_id, tok.suffix_ids)
        log.info("classify: %d classes %s; train %d, val %d%s, test %d reviews", n_classes, self.class_names,
                 len(self.splits["train"]), len(self.splits["val"]),
                 " (held out from train)" if "val" in held else "", len(self.splits["test"]))

    def token_labels(self, tokens: Tensor) -> list[str]:
        return self.tokenizer.token_labels([int(t) for t in tokens])
