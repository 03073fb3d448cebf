"""What the text tasks (lm, classify) share: a tokenizer and the ids the model reads.

With `task.vocab` set, the model reads compact ids (`toylens.tasks.vocab`): the token cache keeps
the tokenizer's ids, the splits map them as they read a batch, and every id a task hands out
(`encode`, `special_tokens`, `bos_token`, the labels) is a compact one. The mapping is fitted on the
training split, saved with the run as `task/vocab.json` (`saved_files`) and read back by `load`
(`from_saved`), so a loaded run never refits it on data that may have changed.
"""

from __future__ import annotations

import logging
import string
import unicodedata
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from toylens.config import TaskConfig, TextTaskConfig
from toylens.errors import ToylensError
from toylens.tasks.base import Task
from toylens.tasks.tokenizers import TextTokenizer
from toylens.tasks.vocab import CompactVocab

log = logging.getLogger("toylens")

VOCAB_FILE = "vocab.json"
COUNT_CHUNK = 1 << 24  # tokens per bincount, so counting a 100M-token memory map stays small


class TextTask(Task):
    """A task over tokenized text; subclasses set `tokenizer` and call `use_vocab` in __init__."""

    is_text = True
    tokenizer: TextTokenizer
    vocab: CompactVocab | None = None
    """The compact vocabulary (None: the model reads the tokenizer's ids)."""

    def use_vocab(self, cfg: TextTaskConfig, given: CompactVocab | None, counts: Callable[[], np.ndarray]) -> None:
        """Set `vocab`: `given` (a saved mapping) or fitted to `counts()` of the training split, as
        `cfg.vocab` asks; None without `cfg.vocab`."""
        if cfg.vocab is None:
            if given is not None:
                raise ToylensError("task.vocab: the run saved a compact vocabulary but its config has none")
            return
        if given is not None:
            given.check(self.tokenizer, "task.vocab")
            if len(given.kept) > cfg.vocab.max_size:
                raise ToylensError(f"task.vocab: the saved mapping keeps {len(given.kept)} ids > max_size")
            self.vocab = given
        else:
            self.vocab = CompactVocab.fit(counts(), self.tokenizer, cfg.vocab.max_size, cfg.vocab.min_count)
        log.info(
            "compact vocabulary: %d of %d tokenizer ids kept, + 1 id for the rest (%s)",
            len(self.vocab.kept),
            self.tokenizer.vocab_size,
            "saved with the run" if given is not None else "fitted to the training split",
        )

    @property
    def n_vocab(self) -> int:
        """The ids the model reads: the compact size, or the tokenizer's."""
        return self.vocab.size if self.vocab is not None else self.tokenizer.vocab_size

    def model_ids(self, ids: np.ndarray) -> np.ndarray:
        """Tokenizer ids -> the ids the model reads (int64)."""
        ids = np.asarray(ids, dtype=np.int64)
        return self.vocab.compact(ids) if self.vocab is not None else ids

    def model_id(self, token: int | None) -> int | None:
        return None if token is None else int(self.model_ids(np.array([token]))[0])

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        """The ids the model reads for `text`: the tokenizer's, mapped to the compact vocabulary."""
        return self.model_ids(np.array(self.tokenizer.encode(text, special_tokens), dtype=np.int64)).tolist()

    def token_labels(self, tokens: Tensor) -> list[str]:
        ids = [int(t) for t in tokens]
        if self.vocab is None:
            return self.tokenizer.token_labels(ids)
        return self.vocab.labels(self.tokenizer, ids)

    def special_tokens(self) -> list[int]:
        return sorted({int(i) for i in self.model_ids(np.array(self.tokenizer.special_ids, dtype=np.int64))})

    def boundary_tokens(self) -> list[int]:
        """As `Task.boundary_tokens`, with the tokens the tokenizer puts before a text ([CLS])."""
        prefix = self.model_ids(np.array(self.tokenizer.prefix_ids, dtype=np.int64)).tolist()
        return sorted(set(super().boundary_tokens()) | {int(i) for i in prefix})

    def bos_token(self) -> int | None:
        return self.model_id(self.tokenizer.eos_id)  # GPT-2-style models read end-of-text as the start

    def random_token_ids(self) -> Tensor:
        """As `Task.random_token_ids`, without the compact vocabulary's `<other>` id."""
        ids = super().random_token_ids()
        return ids if self.vocab is None else ids[ids != self.vocab.other_id]

    def punctuation_ids(self) -> Tensor:
        """The model ids whose token is punctuation (`is_punctuation`), computed once."""
        if getattr(self, "_punctuation", None) is None:
            ids = torch.arange(self.spec.d_vocab)
            self._punctuation = ids[[is_punctuation(label) for label in self.token_labels(ids)]]
        return self._punctuation

    def saved_files(self) -> dict[str, Any]:
        return {VOCAB_FILE: self.vocab.to_json()} if self.vocab is not None else {}

    @classmethod
    def from_saved(cls, cfg: TaskConfig, saved: dict[str, Any]) -> Task:
        vocab = CompactVocab.from_json(saved[VOCAB_FILE], f"task/{VOCAB_FILE}") if VOCAB_FILE in saved else None
        return cls(cfg, vocab=vocab)  # type: ignore[call-arg]

    def other_sums(self, tokens: Tensor, where: Tensor) -> dict[str, tuple[float, int]]:
        """`other_frac`: the share of `tokens` at `where` that are the `<other>` id (compact only)."""
        if self.vocab is None:
            return {}
        return {"other_frac": (float(((tokens == self.vocab.other_id) & where).sum()), int(where.sum()))}


def is_punctuation(label: str) -> bool:
    """Whether a token's label is punctuation: after stripping whitespace (GPT-2's leading space,
    decoded), GPT-2's raw space marker Ġ and WordPiece's ##, it is non-empty and every character is
    ASCII punctuation or a Unicode punctuation character (category P*)."""
    text = label.strip().removeprefix("Ġ").removeprefix("##").strip()
    return bool(text) and all(c in string.punctuation or unicodedata.category(c).startswith("P") for c in text)


def token_counts(tokens: np.ndarray, size: int) -> np.ndarray:
    """Occurrences of each id 0..size-1 in a (memory-mapped) token array, read in chunks."""
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, len(tokens), COUNT_CHUNK):
        counts += np.bincount(np.asarray(tokens[start : start + COUNT_CHUNK], dtype=np.int64), minlength=size)
    return counts
