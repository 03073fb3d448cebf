"""Convert the offline data samples (parquet, laid out like the Hub) into the files toylens ships.

    python scripts/bundle_samples.py /path/to/shared/data    # needs pyarrow (pip install toylens[hf])

Writes `src/toylens/data/{imdb,wikitext}/<config>/<split>.jsonl.gz` (one JSON object per parquet
row, columns unchanged, gzip with mtime 0 so the bytes are reproducible) and the tokenizer files,
and prints the SHA-256 of every source and output for the NOTICE files. Parquet would need pyarrow
at run time; gzipped JSONL reads with the standard library, so the core install stays small.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parents[1] / "src" / "toylens" / "data"
PARQUETS = {
    "imdb/plain_text/train": "imdb/plain_text/train-00000-of-00001.parquet",
    "imdb/plain_text/test": "imdb/plain_text/test-00000-of-00001.parquet",
    "wikitext/wikitext-2-v1/validation": "wikitext/wikitext-2-v1/validation-00000-of-00001.parquet",
    "wikitext/wikitext-2-v1/test": "wikitext/wikitext-2-v1/test-00000-of-00001.parquet",
    "wikitext/wikitext-103-v1/validation": "wikitext/wikitext-103-v1/validation-00000-of-00001.parquet",
    "wikitext/wikitext-103-v1/test": "wikitext/wikitext-103-v1/test-00000-of-00001.parquet",
    "wikitext/wikitext-2-raw-v1/test": "wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet",
}
TOKENIZERS = ["gpt2/tokenizer.json", "bert-base-uncased/tokenizer.json"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(src: Path) -> None:
    for name, rel in PARQUETS.items():
        table = pq.read_table(src / rel)
        rows = table.to_pylist()
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as f:
            f.write(text)
        out = OUT / f"{name}.jsonl.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(buf.getvalue())
        print(f"{rel} sha256 {sha256((src / rel).read_bytes())} -> {out.relative_to(OUT)}: {len(rows)} rows, "
              f"{len(buf.getvalue())} B, sha256 {sha256(buf.getvalue())} (uncompressed {sha256(text)})")
    for rel in TOKENIZERS:
        out = OUT / "tokenizers" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "tokenizers" / rel, out)
        print(f"tokenizers/{rel} -> {out.relative_to(OUT)}: sha256 {sha256(out.read_bytes())}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
