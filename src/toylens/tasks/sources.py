"""Where text comes from: Hugging Face `datasets`, the samples shipped with toylens, or local files.

`open_source(cfg)` returns a `TextSource`: named splits of rows (`{"text": ..., "label": ...}`),
each with a fingerprint of its content (which keys the token cache) and a way to read it in
batches, plus a one-line description of where the data came from, which the tasks log.

With `source: auto`, IMDB and WikiText come from the Hub through `datasets` when it is installed
and the Hub (or `datasets`' offline cache, with HF_HUB_OFFLINE=1) has them, and otherwise from the
samples in `toylens/data/` (4,000 + 2,000 IMDB reviews; the WikiText validation and test splits;
see the NOTICE files there). `hf_path` may also name a local directory laid out like the Hub.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from toylens.config import TextTaskConfig
from toylens.errors import ToylensError

log = logging.getLogger("toylens")

HUB_NAMES = {"imdb": "stanfordnlp/imdb", "wikitext": "Salesforce/wikitext"}
DEFAULT_SUBSETS = {"imdb": "plain_text", "wikitext": "wikitext-103-raw-v1"}
# (dataset, subset) -> split -> file under toylens/data/. The raw WikiText-2 and -103 test sets
# are the same articles, so both raw configurations map to one file.
BUNDLED = {
    ("imdb", "plain_text"): {"train": "imdb/plain_text/train.jsonl.gz", "test": "imdb/plain_text/test.jsonl.gz"},
    ("wikitext", "wikitext-2-v1"): {
        "validation": "wikitext/wikitext-2-v1/validation.jsonl.gz",
        "test": "wikitext/wikitext-2-v1/test.jsonl.gz",
    },
    ("wikitext", "wikitext-103-v1"): {
        "validation": "wikitext/wikitext-103-v1/validation.jsonl.gz",
        "test": "wikitext/wikitext-103-v1/test.jsonl.gz",
    },
    ("wikitext", "wikitext-2-raw-v1"): {"test": "wikitext/wikitext-2-raw-v1/test.jsonl.gz"},
    ("wikitext", "wikitext-103-raw-v1"): {"test": "wikitext/wikitext-2-raw-v1/test.jsonl.gz"},
}
BUNDLED_CLASS_NAMES = {"imdb": ["neg", "pos"]}
ROWS_PER_BATCH = 1000
BYTES_PER_BATCH = 4 << 20


@dataclass
class RowSplit:
    """One split: its rows in batches of columns, and what identifies its content."""

    fingerprint: str
    columns: list[str]
    batches: Callable[[], Iterator[dict[str, list]]]
    n_rows: int | None = None
    n_bytes: int | None = None  # for progress bars over files of unknown row count


@dataclass
class TextSource:
    description: str
    splits: dict[str, RowSplit]
    documents: bool  # rows are whole documents (IMDB) rather than lines of one text (WikiText)
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)


def open_source(cfg: TextTaskConfig) -> TextSource:
    """The rows the config names, from the Hub, the shipped samples or local files."""
    if cfg.dataset == "files":
        return _files_source(cfg)
    hub_name = cfg.hf_path or HUB_NAMES.get(cfg.dataset)
    subset = cfg.subset or DEFAULT_SUBSETS.get(cfg.dataset)
    if cfg.source == "bundled" or (cfg.source == "auto" and cfg.dataset in HUB_NAMES and cfg.hf_path is None):
        reason = "source: bundled" if cfg.source == "bundled" else _hub_unavailable()
        if reason is None:
            try:
                return _hf_source(cfg, hub_name, subset)
            except ToylensError as e:
                reason = str(e)
        if cfg.dataset not in HUB_NAMES:
            raise ToylensError(f"task.source: no bundled sample of dataset {cfg.dataset!r}; use source auto or hub")
        assert subset is not None, "every dataset with a bundled sample has a default subset (DEFAULT_SUBSETS)"
        return _bundled_source(cfg, subset, reason)
    return _hf_source(cfg, hub_name, subset)


# ----------------------------------------------------------------------------------- bundled


def _bundled_source(cfg: TextTaskConfig, subset: str, reason: str) -> TextSource:
    splits = {split: _bundled_split(rel) for split, rel in BUNDLED[(cfg.dataset, subset)].items()}
    sizes = ", ".join(f"{k} {v.n_rows} rows" for k, v in splits.items())
    desc = f"bundled sample of {HUB_NAMES[cfg.dataset]} ({subset}): {sizes} (Hub not used: {reason})"
    return TextSource(
        desc, splits, documents=cfg.dataset != "wikitext", class_names=BUNDLED_CLASS_NAMES.get(cfg.dataset)
    )


def _bundled_split(rel: str) -> RowSplit:
    """A shipped gzipped JSONL file (one Hub row per line); parsed only when tokenized."""
    data = (resources.files("toylens") / "data" / rel).read_bytes()
    lines = gzip.decompress(data).split(b"\n")[:-1]  # not splitlines: texts hold U+2028 and friends
    columns = list(json.loads(lines[0])) if lines else []

    def batches() -> Iterator[dict[str, list]]:
        for i in range(0, len(lines), ROWS_PER_BATCH):
            chunk = [json.loads(line) for line in lines[i : i + ROWS_PER_BATCH]]
            yield {c: [r.get(c) for r in chunk] for c in columns}

    return RowSplit("bundled:" + hashlib.sha256(data).hexdigest(), columns, batches, n_rows=len(lines))


# ------------------------------------------------------------------------------ HF datasets


def _hub_unavailable() -> str | None:
    """Why the Hub cannot be used now (None if it can): `datasets` missing, or no route to the
    Hub. A short probe, because `datasets` retries for about 30 s before giving up offline; with
    HF_HUB_OFFLINE=1 set by the user, `datasets` reads its local cache and no probe is needed."""
    try:
        import datasets
    except ImportError:
        return "Hugging Face datasets is not installed (pip install 'toylens[hf]')"
    if getattr(datasets.config, "HF_HUB_OFFLINE", getattr(datasets.config, "HF_DATASETS_OFFLINE", False)):
        return None
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as e:
        return f"huggingface.co is unreachable ({e.strerror or e}); with HF_HUB_OFFLINE=1 datasets' local cache is used"
    return None


def _hf_source(cfg: TextTaskConfig, path: str | None, subset: str | None) -> TextSource:
    try:
        import datasets
    except ImportError:
        raise ToylensError("task.source: Hugging Face datasets is not installed (pip install 'toylens[hf]')") from None
    assert path is not None
    local = Path(path).expanduser()
    where = str(local) if local.exists() else path
    try:
        dd = datasets.load_dataset(where, subset)
    except Exception as e:  # datasets raises many types (connection, missing config, parse)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ToylensError(f"task.hf_path: could not load {where!r} ({subset}) with datasets: {first}") from None
    splits, class_names = {}, None
    for name, ds in dd.items():
        feature = ds.features.get(getattr(cfg, "label_column", "label"))
        class_names = class_names or getattr(feature, "names", None)
        fingerprint = f"hf:{where}:{subset}:{name}:{getattr(ds, '_fingerprint', '')}:{len(ds)}"
        splits[name] = RowSplit(fingerprint, list(ds.column_names), _hf_batches(ds), n_rows=len(ds))
    kind = "local dataset directory" if local.exists() else "Hugging Face Hub dataset"
    sizes = ", ".join(f"{k} {v.n_rows} rows" for k, v in splits.items())
    return TextSource(
        f"{kind} {where} ({subset}): {sizes}", splits, documents=cfg.dataset != "wikitext", class_names=class_names
    )


def _hf_batches(ds: Any) -> Callable[[], Iterator[dict[str, list]]]:
    def batches() -> Iterator[dict[str, list]]:
        yield from ds.iter(batch_size=ROWS_PER_BATCH)  # reads the memory-mapped Arrow files

    return batches


# ------------------------------------------------------------------------------ local files


def _files_source(cfg: TextTaskConfig) -> TextSource:
    train = _expand(cfg.files, "task.files")
    splits = {"train": _file_split(train, cfg.text_column)}
    desc = f"local files: {len(train)} training file(s)"
    if cfg.test_files:
        test = _expand(cfg.test_files, "task.test_files")
        splits["test"] = _file_split(test, cfg.text_column)
        desc += f", {len(test)} test file(s)"
    # JSONL rows are documents; text files mark their own ends (the `_end_of_document` column).
    return TextSource(desc, splits, documents=all(_is_jsonl(p) for p in train))


def _expand(patterns: list[str], field_name: str) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        expanded = str(Path(pattern).expanduser())
        if glob.has_magic(expanded):
            matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
            if not matches:
                raise ToylensError(f"{field_name}: {pattern!r} matches no file")
            paths += matches
        elif Path(expanded).is_dir():
            raise ToylensError(f"{field_name}: {pattern} is a directory; give files or a glob such as {pattern}/*.txt")
        elif not Path(expanded).is_file():
            raise ToylensError(f"{field_name}: {pattern}: no such file")
        else:
            paths.append(Path(expanded))
    return paths


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _file_split(paths: list[Path], text_column: str) -> RowSplit:
    """Rows of text files (one row per line, so no line needs to fit in memory twice; the end of
    a file ends its document) or of JSONL files (one row per line)."""
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    fingerprint = "files:" + hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    jsonl = [_is_jsonl(p) for p in paths]
    if any(jsonl) and not all(jsonl):
        raise ToylensError("task.files: mix of .txt and .jsonl files; use one kind per split")
    columns = _jsonl_columns(paths[0]) if jsonl[0] else [text_column, "_end_of_document"]

    def batches() -> Iterator[dict[str, list]]:
        for path in paths:
            rows = _jsonl_rows(path) if jsonl[0] else _text_rows(path, text_column)
            chunk: list[dict] = []
            size = 0
            for row in rows:
                chunk.append(row)
                size += len(row.get(text_column) or "") if isinstance(row, dict) else 0
                if len(chunk) == ROWS_PER_BATCH or size > BYTES_PER_BATCH:  # bounded memory for long lines
                    yield {c: [r.get(c) for r in chunk] for c in columns}
                    chunk, size = [], 0
            if chunk:
                yield {c: [r.get(c) for r in chunk] for c in columns}

    return RowSplit(fingerprint, columns, batches, n_bytes=sum(s for _, s, _ in stats))


def _text_rows(path: Path, text_column: str) -> Iterator[dict]:
    """Lines of a text file, at most 1 MiB each (a longer line is split), the last marked as the
    end of the document."""
    with open(path, encoding="utf-8", errors="replace") as f:
        prev = f.readline(1 << 20)
        while prev:
            line = f.readline(1 << 20)
            yield {text_column: prev, "_end_of_document": not line}
            prev = line


def _jsonl_rows(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ToylensError(f"task.files: {path}:{n}: not valid JSON ({e.msg})") from None


def _jsonl_columns(path: Path) -> list[str]:
    first = next(_jsonl_rows(path), None)
    if not isinstance(first, dict):
        raise ToylensError(f"task.files: {path}: expected one JSON object per line")
    return list(first)


def seeded_subset(n_rows: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct row numbers of `n_rows`, chosen by `seed`, in increasing order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_rows)[:count])
