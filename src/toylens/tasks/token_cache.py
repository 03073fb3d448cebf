"""Tokenized splits cached on disk as memory-mapped arrays, so text is tokenized once.

    <cache_dir>/tokens/<key>/tokens.bin    every token id of the split, back to back (uint16/uint32)
                            offsets.bin   int64 start of each row, plus the end (rows mode)
                            labels.bin    int64 label of each row (rows mode, with a label column)
                            meta.json     sizes, dtype and what the key was made of; written last

The key is a hash of the split's content fingerprint, the tokenizer's fingerprint and every
choice that changes the tokens (mode, columns, max_examples and its seed), so a changed file,
tokenizer or subset never reuses stale tokens. An entry is built in a temporary directory and
renamed into place, so a crash or Ctrl-C leaves no half-written entry (the next run starts that
split again). Tokens are streamed to disk in batches of rows: the corpus is never held in memory,
and training reads windows straight from the memory map.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from tqdm.auto import tqdm

from toylens.errors import ToylensError
from toylens.tasks.sources import RowSplit, seeded_subset
from toylens.tasks.tokenizers import TextTokenizer

log = logging.getLogger("toylens")
FORMAT = 1


@dataclass
class TokenArrays:
    """A tokenized split: `tokens` (memory-mapped), and per row `offsets`/`labels` in rows mode."""

    tokens: np.ndarray
    offsets: np.ndarray | None
    labels: np.ndarray | None
    meta: dict

    @property
    def n_rows(self) -> int:
        return int(self.meta["n_rows"])


@dataclass(frozen=True)
class Tokenization:
    """How one split becomes tokens.

    stream: the rows joined into one token stream (language modelling), without the tokenizer's
    [CLS]/[SEP]-style tokens, with its end-of-text token after each document.
    rows: each row tokenized alone with those tokens (classification), plus its label.
    """

    mode: Literal["stream", "rows"]
    text_column: str
    label_column: str | None = None
    documents: bool = True
    max_examples: int | None = None
    seed: int = 0


def tokenized_split(
    cache_dir: str | Path, name: str, split: RowSplit, tok: TextTokenizer, how: Tokenization
) -> TokenArrays:
    """The split's tokens from the cache, tokenizing (with a progress bar) on first use."""
    for column, field in ((how.text_column, "text_column"), (how.label_column, "label_column")):
        if column is not None and column not in split.columns:
            raise ToylensError(
                f"task.{field}: the {name} split has no column {column!r} "
                f"(columns: {', '.join(c for c in split.columns if not c.startswith('_')) or 'none'})"
            )
    if how.max_examples is not None and split.n_rows is not None and how.max_examples >= split.n_rows:
        how = dataclasses.replace(how, max_examples=None)  # selects every row: same tokens, same entry
    root = Path(cache_dir).expanduser() / "tokens"
    key_parts = {"format": FORMAT, "data": split.fingerprint, "tokenizer": tok.fingerprint, **how.__dict__}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:32]
    entry = root / key
    if not (entry / "meta.json").is_file():
        _build(entry, name, split, tok, how, key_parts)
    else:
        log.info("tokens for the %s split: cached in %s", name, entry)
    return _open(entry)


def _open(entry: Path) -> TokenArrays:
    meta = json.loads((entry / "meta.json").read_text())

    def mapped(file: str, dtype: str, n: int) -> np.ndarray:
        if n == 0:  # numpy cannot memory-map an empty file
            return np.zeros(0, dtype=dtype)
        return np.memmap(entry / file, dtype=dtype, mode="r", shape=(n,))

    tokens = mapped("tokens.bin", meta["dtype"], meta["n_tokens"])
    offsets = mapped("offsets.bin", "int64", meta["n_rows"] + 1) if meta["mode"] == "rows" else None
    labels = mapped("labels.bin", "int64", meta["n_rows"]) if meta["has_labels"] else None
    return TokenArrays(tokens, offsets, labels, meta)


def _build(entry: Path, name: str, split: RowSplit, tok: TextTokenizer, how: Tokenization, key_parts: dict) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp"))
    try:
        meta = _write_tokens(tmp, name, split, tok, how)
        meta.update(mode=how.mode, key=key_parts, tokenizer_name=tok.name)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        for f in tmp.iterdir():  # durable before the rename makes the entry visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, entry)
        except OSError:  # another process finished the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("tokens for the %s split: %d tokens in %s", name, meta["n_tokens"], entry)


def _write_tokens(tmp: Path, name: str, split: RowSplit, tok: TextTokenizer, how: Tokenization) -> dict:
    dtype = np.dtype("uint16" if tok.vocab_size <= 1 << 16 else "uint32")
    offsets, labels = array("q", [0]), array("q")
    n_tokens, n_rows, dropped = 0, 0, 0
    total, unit = (split.n_rows, "rows") if split.n_bytes is None else (split.n_bytes, "B")
    bar = tqdm(total=total, unit=unit, unit_scale=True, desc=f"tokenizing {name}", disable=None, leave=False)
    with open(tmp / "tokens.bin", "wb") as out, bar:
        for batch in _selected(split, how):
            texts = [t if isinstance(t, str) else "" for t in batch[how.text_column]]
            bar.update(len(texts) if split.n_bytes is None else sum(len(t.encode()) for t in texts))
            ids = tok.encode_batch(texts, special_tokens=how.mode == "rows")
            if how.mode == "stream":
                n_tokens += _write(out, _with_eos(ids, batch, how, tok.eos_id), dtype)
                n_rows += len(ids)
                continue
            for i, row in enumerate(ids):
                if not row:  # an empty text has no last token to read a label at
                    dropped += 1
                    continue
                if how.label_column is not None:
                    labels.append(_label(batch[how.label_column][i], name, n_rows + dropped, how.label_column))
                n_tokens += _write(out, row, dtype)
                offsets.append(n_tokens)
                n_rows += 1
    if how.mode == "rows":
        (tmp / "offsets.bin").write_bytes(offsets.tobytes())
        if how.label_column is not None:
            (tmp / "labels.bin").write_bytes(labels.tobytes())
    if dropped:
        log.info("%s split: dropped %d empty rows", name, dropped)
    return {
        "n_tokens": n_tokens,
        "n_rows": n_rows,
        "dtype": dtype.name,
        "dropped_rows": dropped,
        "has_labels": how.mode == "rows" and how.label_column is not None,
    }


def _selected(split: RowSplit, how: Tokenization):
    """The split's batches, cut to max_examples rows: the first ones for a line stream, a seeded
    random choice for documents of a known count."""
    if how.max_examples is None or (split.n_rows is not None and how.max_examples >= split.n_rows):
        yield from split.batches()
        return
    keep = None
    if how.documents and split.n_rows is not None:
        keep = np.zeros(split.n_rows, dtype=bool)
        keep[seeded_subset(split.n_rows, how.max_examples, how.seed)] = True
    seen = 0
    for batch in split.batches():
        n = len(next(iter(batch.values())))
        if keep is not None:
            mask = keep[seen : seen + n]
            batch = {c: list(itertools.compress(v, mask)) for c, v in batch.items()}
        elif seen + n > how.max_examples:
            batch = {c: v[: how.max_examples - seen] for c, v in batch.items()}
        seen += n
        yield batch
        if keep is None and seen >= how.max_examples:
            return


def _with_eos(ids: list[list[int]], batch: dict[str, list], how: Tokenization, eos: int | None) -> list[list[int]]:
    """Append end-of-text after each document: every row of a document dataset, the last line
    of each text file."""
    ends = batch.get("_end_of_document") or [how.documents] * len(ids)
    if eos is None:
        return ids
    return [row + [eos] if end else row for row, end in zip(ids, ends)]


def _write(out: BinaryIO, rows: list[int] | list[list[int]], dtype: np.dtype) -> int:
    flat = rows if not rows or isinstance(rows[0], int) else list(itertools.chain.from_iterable(rows))
    arr = np.asarray(flat, dtype=np.int64)
    out.write(arr.astype(dtype).tobytes())
    return len(arr)


def _label(value: object, split: str, row: int, column: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ToylensError(
            f"task.label_column: row {row} of the {split} split has label {value!r}; "
            "labels must be integers 0..n_classes-1"
        )
    return int(value)
