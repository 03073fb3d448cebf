"""Sequence classification (IMDB sentiment): the label is predicted at the last real token.

Each review is tokenized alone (with the tokenizer's [CLS]/[SEP] for BERT), truncated to its first
n_ctx tokens (keeping a trailing [SEP]), and right-padded to the longest review in the batch. The
only target is the label, at the review's last real token; every other position is IGNORE. Under
causal attention that position never sees the pads after it, so padding cannot change the
prediction. The model is the same Transformer as for language modelling, with d_vocab_out = the
number of classes, so every analysis runs on it unchanged.

Splits: `train`; `val`, a seeded val_fraction of the training reviews (or the data's validation
split), which picks the best checkpoint (highest `val/acc`); and `test`, never used for any choice.
Metrics: `loss` and `acc` per review, and with a compact vocabulary (`task.vocab`, see `tasks.text`)
`other_frac`, the share of review tokens that are the `<other>` id. Outputs are classes, not tokens.

For patching, one sentiment word of each review (good, great, loved, ...) is swapped for its
antonym (reviews without one are skipped). Answers: the clean label; wrong answers: the other
class; metric: logit_diff. (Whether the prediction flips depends on the model: a small model
reads many words, so one swap usually moves the logit difference only part of the way.)
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from toylens.config import ClassifyTaskConfig
from toylens.errors import ToylensError
from toylens.tasks.base import IGNORE, Batch, CorruptedPair, Split, Task, TaskSpec
from toylens.tasks.registry import register_task
from toylens.tasks.sources import open_source
from toylens.tasks.text import TextTask, token_counts
from toylens.tasks.token_cache import TokenArrays, Tokenization, tokenized_split
from toylens.tasks.tokenizers import load_tokenizer
from toylens.tasks.vocab import CompactVocab

log = logging.getLogger("toylens")


class ReviewSplit(Split):
    """Some rows of a tokenized split, each truncated to n_ctx and right-padded in its batch (in the
    tokenizer's ids, then mapped to compact ids when there is a `vocab`)."""

    def __init__(
        self,
        arrays: TokenArrays,
        rows: np.ndarray,
        n_ctx: int,
        pad_id: int,
        suffix: list[int],
        vocab: CompactVocab | None = None,
    ):
        self.arrays, self.rows, self.n_ctx, self.pad_id, self.vocab = arrays, rows, n_ctx, pad_id, vocab
        self.suffix = np.asarray(suffix, dtype=np.int64)
        assert arrays.offsets is not None, "a classify split is tokenized in rows mode, which records offsets"
        self.offsets, self.labels = arrays.offsets, _labels(arrays)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: Tensor) -> Batch:
        rows = self.rows[idx.cpu().numpy()]
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = np.minimum(ends - starts, self.n_ctx)
        width = int(lengths.max()) if len(rows) else 1
        tokens = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        for i, (start, end, length) in enumerate(zip(starts, ends, lengths)):
            tokens[i, :length] = self.arrays.tokens[start : start + length]
            if end - start > self.n_ctx and len(self.suffix):  # truncated: keep the closing [SEP]
                tokens[i, length - len(self.suffix) : length] = self.suffix
        targets = np.full_like(tokens, IGNORE)
        targets[np.arange(len(rows)), lengths - 1] = self.labels[rows]
        if self.vocab is not None:
            tokens = self.vocab.compact(tokens)
        return Batch(torch.from_numpy(tokens), torch.from_numpy(targets))


def _row_counts(arrays: TokenArrays, rows: np.ndarray, size: int) -> np.ndarray:
    """Occurrences of each tokenizer id in the given rows (the training reviews, untruncated)."""
    assert arrays.offsets is not None
    where = np.concatenate([np.arange(s, e) for s, e in zip(arrays.offsets[rows], arrays.offsets[rows + 1])])
    return token_counts(np.asarray(arrays.tokens)[where], size)


def _labels(arrays: TokenArrays) -> np.ndarray:
    """Each row's label: classify tokenizes every split with its label column, so they are there."""
    assert arrays.labels is not None, "a classify split is tokenized with its label column"
    return arrays.labels


@register_task
class ClassifyTask(TextTask):
    config_class = ClassifyTaskConfig
    eval_splits = ("val", "test")
    select_metric = "val/acc"
    metric_goals = {**Task.metric_goals, "other_frac": "min"}
    patch_metric = "logit_diff"

    def __init__(self, cfg: ClassifyTaskConfig, vocab: CompactVocab | None = None):
        self.cfg = cfg
        self.tokenizer = tok = load_tokenizer(cfg.tokenizer)
        source = open_source(cfg)
        log.info("data: %s", source.description)
        if "train" not in source.splits:
            raise ToylensError(f"task: {source.description} has no train split")

        def rows(split: str, limit: int | None) -> TokenArrays:
            how = Tokenization(
                "rows", cfg.text_column, cfg.label_column, documents=True, max_examples=limit, seed=cfg.data_seed
            )
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
        arrays = {"train": train} | {
            s: rows(h, cfg.max_eval_examples) for s, h in (("val", "validation"), ("test", "test")) if s not in held
        }
        self.class_names = source.class_names or [str(i) for i in range(int(_labels(train).max()) + 1)]
        n_classes = len(self.class_names)
        self.use_vocab(cfg, vocab, lambda: _row_counts(train, np.sort(order), tok.vocab_size))
        self.spec = TaskSpec(d_vocab=self.n_vocab, d_vocab_out=n_classes, n_ctx=cfg.n_ctx)
        self.splits = {"train": ReviewSplit(train, np.sort(order), cfg.n_ctx, tok.pad_id, tok.suffix_ids, self.vocab)}
        for split in ("val", "test"):
            data = train if split in held else arrays[split]
            chosen = held[split] if split in held else np.arange(data.n_rows)
            if data.n_rows and int(_labels(data).max()) >= n_classes:
                raise ToylensError(
                    f"task.label_column: the {split} split has label {int(_labels(data).max())}; "
                    f"the classes are {self.class_names}"
                )
            self.splits[split] = ReviewSplit(data, chosen, cfg.n_ctx, tok.pad_id, tok.suffix_ids, self.vocab)
        log.info(
            "classify: %d classes %s; train %d, val %d%s, test %d reviews",
            n_classes,
            self.class_names,
            len(self.splits["train"]),
            len(self.splits["val"]),
            " (held out from train)" if "val" in held else "",
            len(self.splits["test"]),
        )

    def metric_sums(self, logits: Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """Loss and accuracy per review, and with a compact vocabulary `other_frac`: the share of
        the reviews' tokens (up to each label position, no padding) that are `<other>`."""
        review = (batch.targets != IGNORE).long().flip(1).cumsum(1).flip(1) > 0
        return {**super().metric_sums(logits, batch), **self.other_sums(batch.tokens, review)}

    def output_labels(self) -> list[str]:
        return list(self.class_names)

    def corrupted_pair(self, n: int = 32, seed: int = 0) -> CorruptedPair:
        """Swap one sentiment word of each review for its antonym (reviews without one are skipped);
        the wrong answer is the other class."""
        gen = torch.Generator().manual_seed(seed)
        swap = antonym_ids(self.tokenizer)
        if self.vocab is not None:  # in compact ids; a word in the <other> bucket cannot be swapped
            ids, other = self.vocab.table, self.vocab.other_id
            swap = {int(ids[a]): int(ids[b]) for a, b in swap.items() if other not in (ids[a], ids[b])}
        if not swap:
            raise ToylensError("task classify: no sentiment word and its antonym are both in the vocabulary")
        split = self.splits[self.eval_splits[0]]
        batch = split.batch(torch.arange(min(len(split), 20 * n)))
        table = torch.full((self.spec.d_vocab,), -1, dtype=torch.long)
        table[torch.tensor(list(swap))] = torch.tensor(list(swap.values()))
        before_label = (batch.targets != IGNORE).long().flip(1).cumsum(1).flip(1) > 0  # the review itself
        swappable = (table[batch.tokens] >= 0) & before_label
        rows = swappable.any(1).nonzero().squeeze(1)[:n]
        if len(rows) == 0:
            raise ToylensError(f"task classify: none of {len(batch)} reviews contains a sentiment word to swap")
        clean, targets, swappable = batch.tokens[rows], batch.targets[rows], swappable[rows]
        width = int((targets != IGNORE).nonzero()[:, 1].max()) + 1  # drop padding no kept review needs
        clean, targets, swappable = clean[:, :width], targets[:, :width], swappable[:, :width]
        # one random swappable position per review
        pick = torch.where(swappable, torch.rand(swappable.shape, generator=gen), -1.0).argmax(1)
        corrupted = clean.clone()
        corrupted[torch.arange(len(rows)), pick] = table[clean[torch.arange(len(rows)), pick]]
        wrong = torch.where(targets != IGNORE, (targets + 1) % self.spec.d_vocab_out, IGNORE)
        description = "one sentiment word of each review swapped for its antonym (good/bad, great/terrible, ...)"
        return CorruptedPair(clean, corrupted, targets, wrong, description)


# Single-word sentiment antonyms; a pair is used in every casing/spacing the tokenizer keeps as one token.
SENTIMENT_PAIRS = (
    ("good", "bad"),
    ("great", "terrible"),
    ("best", "worst"),
    ("love", "hate"),
    ("loved", "hated"),
    ("excellent", "awful"),
    ("wonderful", "horrible"),
    ("amazing", "boring"),
    ("beautiful", "ugly"),
    ("brilliant", "stupid"),
    ("perfect", "poor"),
    ("fun", "dull"),
    ("enjoyable", "painful"),
)


def antonym_ids(tokenizer: object) -> dict[int, int]:
    """token id -> id of its antonym, for the SENTIMENT_PAIRS that are single tokens both ways (any
    tokenizer with `encode(text, special_tokens=False)`)."""
    swap: dict[int, int] = {}
    for a, b in SENTIMENT_PAIRS:
        for fa, fb in ((a, b), (a.capitalize(), b.capitalize())):
            for space in ("", " "):
                ia = tokenizer.encode(space + fa, special_tokens=False)  # type: ignore[attr-defined]
                ib = tokenizer.encode(space + fb, special_tokens=False)  # type: ignore[attr-defined]
                if len(ia) == 1 and len(ib) == 1 and ia != ib:
                    swap[ia[0]], swap[ib[0]] = ib[0], ia[0]
    return swap
