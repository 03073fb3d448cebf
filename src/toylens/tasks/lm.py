"""Causal language modelling on packed windows of n_ctx tokens (WikiText, IMDB text, local files).

Each split is one token stream (documents joined with the tokenizer's end-of-text token) cut
into non-overlapping windows: window i reads tokens[i*n_ctx : (i+1)*n_ctx] and predicts the
tokens one to the right, so every position has a target. The streams live in the memory-mapped
token cache (`token_cache.py`); a batch reads its windows from disk, so WikiText-103 (about 100M
tokens) trains without being held in memory.

Splits: `train`, `val` (selects the best checkpoint) and `test`. Where the data has no
validation or test split, the tail of the training stream is held out instead (test_fraction,
then val_fraction, contiguous so no window straddles two splits). The bundled WikiText sample
has no training split (see `toylens/data/wikitext/NOTICE.md`): offline, the model trains on the
validation split minus its last val_fraction, selects on that tail, and is tested on the test split.
Metrics: `loss` (nats per token), `ppl` = exp(loss), `acc` (top-1 next token). Patching breaks a
repeated sequence of random tokens (`tasks.repeated`, started with end-of-text) and measures
neg_loss on its second half.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from toylens.config import LmTaskConfig
from toylens.errors import ToylensError
from toylens.tasks.base import Batch, CorruptedPair, Split, Task, TaskSpec
from toylens.tasks.registry import register_task
from toylens.tasks.repeated import repeated_pair
from toylens.tasks.sources import open_source
from toylens.tasks.token_cache import TokenArrays, Tokenization, tokenized_split
from toylens.tasks.tokenizers import load_tokenizer

log = logging.getLogger("toylens")


class WindowSplit(Split):
    """Non-overlapping windows of n_ctx + 1 tokens over tokens[start:stop] of a (memory-mapped) stream."""

    def __init__(self, tokens: np.ndarray, start: int, stop: int, n_ctx: int):
        self.tokens, self.start, self.n_ctx = tokens, start, n_ctx
        self.n_windows = max(0, (stop - start - 1) // n_ctx)

    def __len__(self) -> int:
        return self.n_windows

    def batch(self, idx: Tensor) -> Batch:
        starts = self.start + idx.numpy().astype(np.int64) * self.n_ctx
        rows = self.tokens[starts[:, None] + np.arange(self.n_ctx + 1)]  # [batch, n_ctx + 1], read from disk
        seq = torch.from_numpy(rows.astype(np.int64))
        return Batch(seq[:, :-1], seq[:, 1:])

    @property
    def n_tokens(self) -> int:
        return self.n_windows * self.n_ctx


@register_task
class LmTask(Task):
    config_class = LmTaskConfig
    eval_splits = ("val", "test")
    select_metric = "val/loss"
    metric_goals = {**Task.metric_goals, "ppl": "min"}
    outputs_are_tokens = True
    patch_metric = "neg_loss"

    def __init__(self, cfg: LmTaskConfig):
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        self.spec = TaskSpec(d_vocab=self.tokenizer.vocab_size, d_vocab_out=self.tokenizer.vocab_size, n_ctx=cfg.n_ctx)
        source = open_source(cfg)
        log.info("data: %s", source.description)
        train_name = next((s for s in ("train", "validation") if s in source.splits), None)
        if train_name is None:
            raise ToylensError(
                f"task: {source.description} has no train or validation split to train on"
                + ("; offline, use subset wikitext-103-v1 or wikitext-2-v1" if cfg.dataset == "wikitext" else "")
            )

        def stream(split: str, limit: int | None) -> TokenArrays:
            how = Tokenization(
                "stream", cfg.text_column, documents=source.documents, max_examples=limit, seed=cfg.data_seed
            )
            return tokenized_split(cfg.cache_dir, split, source.splits[split], self.tokenizer, how)

        train = stream(train_name, cfg.max_examples)
        n = len(train.tokens)
        if n == 0:
            raise ToylensError(f"task: empty corpus: the {train_name} split of {source.description} has no tokens")
        cut_test = 0 if "test" in source.splits else math.floor(n * cfg.test_fraction)
        cut_val = 0 if "validation" in source.splits and train_name == "train" else math.floor(n * cfg.val_fraction)
        train_stop = n - cut_test - cut_val
        self.splits = {"train": WindowSplit(train.tokens, 0, train_stop, cfg.n_ctx)}
        if cut_val:
            self.splits["val"] = WindowSplit(train.tokens, train_stop, train_stop + cut_val, cfg.n_ctx)
        else:
            val = stream("validation", cfg.max_eval_examples).tokens
            self.splits["val"] = WindowSplit(val, 0, len(val), cfg.n_ctx)
        if cut_test:
            self.splits["test"] = WindowSplit(train.tokens, n - cut_test, n, cfg.n_ctx)
        else:
            test = stream("test", cfg.max_eval_examples).tokens
            self.splits["test"] = WindowSplit(test, 0, len(test), cfg.n_ctx)
        for split, data in self.splits.items():
            if len(data) == 0:
                raise ToylensError(
                    f"task.n_ctx: the {split} split has too few tokens for one window of "
                    f"{cfg.n_ctx + 1} (empty or tiny corpus; lower n_ctx or add data)"
                )
        held_out = " (held out from the end of the training stream)" if cut_val else ""
        log.info(
            "lm windows of %d tokens: train %d, val %d%s, test %d",
            cfg.n_ctx,
            len(self.splits["train"]),
            len(self.splits["val"]),
            held_out,
            len(self.splits["test"]),
        )

    def unigram_loss(self, split: str = "test", smoothing: float = 1.0) -> float:
        """Loss (nats per token) on `split` of a unigram model fitted to the training windows'
        targets with add-`smoothing` counts over the whole vocabulary: the baseline to beat."""
        train = self.splits["train"]
        counts = np.bincount(_targets(train), minlength=self.spec.d_vocab_out).astype(np.float64) + smoothing
        log_p = np.log(counts / counts.sum())
        return float(-log_p[_targets(self.splits[split])].mean())

    def finalize(self, metrics: dict[str, float]) -> dict[str, float]:
        return {**metrics, "ppl": math.exp(min(metrics["loss"], 50.0))}

    def token_labels(self, tokens: Tensor) -> list[str]:
        return self.tokenizer.token_labels([int(t) for t in tokens])

    def special_tokens(self) -> list[int]:
        return self.tokenizer.special_ids

    def bos_token(self) -> int | None:
        return self.tokenizer.eos_id  # GPT-2-style models read end-of-text as the start of a text

    def corrupted_pair(self, n: int = 32, seed: int = 0) -> CorruptedPair:
        return repeated_pair(self, n, seed)


def _targets(split: Split) -> np.ndarray:
    """Every target token of a window split (what the loss is averaged over), as one array."""
    assert isinstance(split, WindowSplit)
    return np.asarray(split.tokens[split.start + 1 : split.start + 1 + split.n_tokens], dtype=np.int64)
