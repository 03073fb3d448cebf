"""A compact vocabulary for the text tasks: the tokenizer's ids mapped to the most frequent ids of
the training split, plus one `<other>` id for everything else (`task.vocab` in a config).

    vocab = CompactVocab.fit(counts, tokenizer, max_size=2048, min_count=2)
    vocab.compact(np.array([464, 3290, 31000]))   # array([ 5, 812, 2048]): 2048 is the bucket
    vocab.labels(tokenizer, [5, 812, 2048])       # ['The', ' cat', '<other>']

Tokenization is unchanged (the token cache holds tokenizer ids); splits map ids to compact ids as
they read a batch. Compact ids: the kept special tokens first (ascending tokenizer id), then the
other kept tokens from most to least frequent (ties: lower tokenizer id first), then the bucket.
The mapping is saved with a run as JSON (`to_json`; the run manifest checksums it) and read back
by `from_json`, so a loaded run encodes and labels tokens exactly as in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toylens.errors import ToylensError
from toylens.tasks.tokenizers import TextTokenizer

OTHER_LABEL = "<other>"
FORMAT = "toylens-compact-vocab/1"


@dataclass(frozen=True)
class CompactVocab:
    """`kept[i]` is the tokenizer id of compact id i; compact id `len(kept)` (`other_id`) is every
    other token. `tokenizer` is the tokenizer's fingerprint, so a mapping is never applied to ids
    of another tokenizer."""

    kept: tuple[int, ...]
    n_special: int
    tokenizer_size: int
    tokenizer: str
    table: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = np.asarray(self.kept, dtype=np.int64)
        if len(set(self.kept)) != len(self.kept) or (len(ids) and (ids.min() < 0 or ids.max() >= self.tokenizer_size)):
            raise ToylensError(f"compact vocabulary: kept ids must be distinct ids below {self.tokenizer_size}")
        table = np.full(self.tokenizer_size, len(self.kept), dtype=np.int64)
        table[ids] = np.arange(len(ids))
        object.__setattr__(self, "table", table)

    @classmethod
    def fit(cls, counts: np.ndarray, tok: TextTokenizer, max_size: int, min_count: int = 1) -> CompactVocab:
        """Keep the special tokens and the most frequent of the rest (`counts[i]`: occurrences of
        tokenizer id i in the training split), at most `max_size` ids in all, each seen at least
        `min_count` times."""
        special = sorted(set(tok.special_ids) | set(tok.prefix_ids))
        if len(special) > max_size:
            raise ToylensError(f"task.vocab.max_size: {max_size} cannot hold the {len(special)} special tokens")
        counts = np.asarray(counts, dtype=np.int64)
        counts = np.pad(counts, (0, tok.vocab_size - len(counts)))  # ids above the largest seen: 0
        order = np.lexsort((np.arange(len(counts)), -counts))  # most frequent first, ties: lower id
        order = order[(counts[order] >= min_count) & ~np.isin(order, special)]
        frequent = order[: max_size - len(special)]
        return cls(tuple(special) + tuple(int(i) for i in frequent), len(special), tok.vocab_size, tok.fingerprint)

    @property
    def other_id(self) -> int:
        """The bucket's compact id (the last one)."""
        return len(self.kept)

    @property
    def size(self) -> int:
        """Compact ids, the bucket included: the model's d_vocab."""
        return len(self.kept) + 1

    def compact(self, ids: np.ndarray) -> np.ndarray:
        """Tokenizer ids -> compact ids (int64); tokens not kept -> `other_id`."""
        return self.table[np.asarray(ids, dtype=np.int64)]

    def compact_id(self, token: int | None) -> int | None:
        return None if token is None else int(self.table[token])

    def labels(self, tok: TextTokenizer, ids: list[int]) -> list[str]:
        """Readable strings of compact ids: the tokens' own labels, `<other>` for the bucket."""
        real = tok.token_labels([self.kept[i] for i in ids if i != self.other_id])
        it = iter(real)
        return [OTHER_LABEL if i == self.other_id else next(it) for i in ids]

    def check(self, tok: TextTokenizer, where: str) -> None:
        """Refuse a mapping made for another tokenizer."""
        if tok.fingerprint != self.tokenizer or tok.vocab_size != self.tokenizer_size:
            raise ToylensError(f"{where}: the compact vocabulary was built for another tokenizer than {tok.name!r}")

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "kept": list(self.kept),
            "n_special": self.n_special,
            "tokenizer_size": self.tokenizer_size,
            "tokenizer": self.tokenizer,
            "other_id": self.other_id,
        }

    @classmethod
    def from_json(cls, obj: dict, where: str = "vocab.json") -> CompactVocab:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ToylensError(f"{where}: not a toylens compact vocabulary (format {FORMAT})")
        try:
            kept = tuple(int(i) for i in obj["kept"])
            vocab = cls(kept, int(obj["n_special"]), int(obj["tokenizer_size"]), str(obj["tokenizer"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ToylensError(f"{where}: malformed compact vocabulary ({e})") from None
        if obj.get("other_id") != vocab.other_id:
            raise ToylensError(f"{where}: other_id {obj.get('other_id')} does not match {len(vocab.kept)} kept ids")
        return vocab
