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
Metrics: `loss` (nats per token), `ppl` = exp(loss), `acc` (top-1 next token), and with a compact
vocabulary (`task.vocab`, see `tasks.text`) `other_frac`, the share of targets that are the
`<other>` id, whose loss is that of predicting the bucket. Patching breaks a
repeated sequence of random tokens (`tasks.repeated`, started with end-of-text, halves of 20
tokens: see `LmTask.corrupted_pair`) and measures neg_loss on its second half.
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
from toylens.tasks.text import COUNT_CHUNK, TextTask, token_counts
from toylens.tasks.token_cache import TokenArrays, Tokenization, tokenized_split
from toylens.tasks.tokenizers import load_tokenizer
from toylens.tasks.vocab import CompactVocab

log = logging.getLogger("toylens")
LM_HALF = 20
"""Tokens in each half of `LmTask.corrupted_pair`'s repeated sequences."""


class WindowSplit(Split):
    """Non-overlapping windows of n_ctx + 1 tokens over tokens[start:stop] of a (memory-mapped) stream,
    mapped to compact ids when there is a `vocab`."""

    def __init__(self, tokens: np.ndarray, start: int, stop: int, n_ctx: int, vocab: CompactVocab | None = None):
        self.tokens, self.start, self.n_ctx, self.vocab = tokens, start, n_ctx, vocab
        self.n_windows = max(0, (stop - start - 1) // n_ctx)

    def __len__(self) -> int:
        return self.n_windows

    def batch(self, idx: Tensor) -> Batch:
        starts = self.start + idx.cpu().numpy().astype(np.int64) * self.n_ctx
        rows = self.tokens[starts[:, None] + np.arange(self.n_ctx + 1)]  # [batch, n_ctx + 1], read from disk
        seq = torch.from_numpy(self.vocab.compact(rows) if self.vocab is not None else rows.astype(np.int64))
        return Batch(seq[:, :-1], seq[:, 1:])

    @property
    def n_tokens(self) -> int:
        return self.n_windows * self.n_ctx

    def target_counts(self, size: int) -> np.ndarray:
        """Occurrences of each model id 0..size-1 among the targets, read in chunks (a 100M-token
        stream is never held as one int64 array)."""
        counts = np.zeros(size, dtype=np.int64)
        first = self.start + 1
        for lo in range(first, first + self.n_tokens, COUNT_CHUNK):
            ids = np.asarray(self.tokens[lo : min(lo + COUNT_CHUNK, first + self.n_tokens)], dtype=np.int64)
            counts += np.bincount(self.vocab.compact(ids) if self.vocab is not None else ids, minlength=size)
        return counts


@register_task
class LmTask(TextTask):
    config_class = LmTaskConfig
    eval_splits = ("val", "test")
    select_metric = "val/loss"
    metric_goals = {**Task.metric_goals, "ppl": "min", "other_frac": "min"}
    outputs_are_tokens = True
    patch_metric = "neg_loss"

    def __init__(self, cfg: LmTaskConfig, vocab: CompactVocab | None = None):
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.tokenizer)
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
        # the compact vocabulary counts the tokens the training windows read
        n_read = WindowSplit(train.tokens, 0, train_stop, cfg.n_ctx).n_tokens + 1
        self.use_vocab(cfg, vocab, lambda: token_counts(train.tokens[:n_read], self.tokenizer.vocab_size))
        self.spec = TaskSpec(d_vocab=self.n_vocab, d_vocab_out=self.n_vocab, n_ctx=cfg.n_ctx)
        self.splits = {"train": WindowSplit(train.tokens, 0, train_stop, cfg.n_ctx, self.vocab)}
        if cut_val:
            self.splits["val"] = WindowSplit(train.tokens, train_stop, train_stop + cut_val, cfg.n_ctx, self.vocab)
        else:
            val = stream("validation", cfg.max_eval_examples).tokens
            self.splits["val"] = WindowSplit(val, 0, len(val), cfg.n_ctx, self.vocab)
        if cut_test:
            self.splits["test"] = WindowSplit(train.tokens, n - cut_test, n, cfg.n_ctx, self.vocab)
        else:
            test = stream("test", cfg.max_eval_examples).tokens
            self.splits["test"] = WindowSplit(test, 0, len(test), cfg.n_ctx, self.vocab)
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

    def data_restrictions(self) -> dict[str, str]:
        known = {"punctuation": "the targets that are punctuation tokens"}
        if self.vocab is not None:
            known["other"] = "the targets that are the compact vocabulary's <other> id"
        return known

    def keep_targets(self, name: str, batch: Batch) -> Tensor:
        if name == "other":
            assert self.vocab is not None  # data_restrictions names "other" only then
            return batch.targets == self.vocab.other_id
        return torch.isin(batch.targets, self.punctuation_ids().to(batch.targets.device))

    def unigram_loss(self, split: str = "test", smoothing: float = 1.0) -> float:
        """Loss (nats per token) on `split` of a unigram model fitted to the training windows'
        targets with add-`smoothing` counts over the whole output vocabulary: the baseline to beat.
        With a compact vocabulary both the fit and the score are over the compact ids (the
        `<other>` id is one more token), as the model's loss is."""
        size = self.spec.d_vocab_out
        counts = _windows(self.splits["train"]).target_counts(size).astype(np.float64) + smoothing
        log_p = np.log(counts / counts.sum())
        scored = _windows(self.splits[split]).target_counts(size)
        return float(-(scored @ log_p) / scored.sum())

    def baselines(self) -> dict[str, float]:
        """`val/unigram_loss` and `test/unigram_loss` (`unigram_loss`): the loss to beat."""
        return {f"{split}/unigram_loss": self.unigram_loss(split) for split in self.eval_splits}

    def metric_sums(self, logits: Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """Loss and accuracy (the `<other>` id is an ordinary class), and with a compact
        vocabulary `other_frac`: the share of targets that are `<other>`."""
        return {**super().metric_sums(logits, batch), **self.other_sums(batch.targets, batch.mask)}

    def finalize(self, metrics: dict[str, float]) -> dict[str, float]:
        return {**metrics, "ppl": math.exp(min(metrics["loss"], 50.0))}

    def corrupted_pair(self, n: int = 32, seed: int = 0) -> CorruptedPair:
        """Repeated random tokens with the first half replaced, halves of 20 tokens, shorter than the
        head scores' 50 (`tasks.repeated.HALF`): patching costs grow with the square of the length,
        and on the quick IMDB 2-layer model 50-token halves took `analyze` from 11.7 to 35.3 s while
        the quick text models copy on neither (clean and corrupted losses within 0.08 nats)."""
        return repeated_pair(self, n, seed, half=LM_HALF)


def _windows(split: Split) -> WindowSplit:
    """An lm split (always a window split; the assert tells the type checker so)."""
    assert isinstance(split, WindowSplit)
    return split
