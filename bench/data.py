"""Peak memory of tokenizing and training from a large local text corpus (default 1 GB).

    .venv/bin/python bench/data.py --gb 1.0 --steps 200

Generates a corpus of English-like text (a 25 MB block of words drawn with their frequencies in
the bundled WikiText-103 test split, lines of 20-200 words, repeated to fill 10 files) in a
temporary directory, then in a child process builds the `lm` task
on it (GPT-2 tokenizer: tokens streamed to the memory-mapped cache) and trains a 1-layer model
(d_model 32, batch 8 x 128 tokens: the [8, 128, 50257] logits and their gradients are most of the
training memory) for `--steps` steps on random windows drawn from the whole memory-mapped stream. Prints the
tokenizing and training times and the child's peak RSS, next to the corpus size, and removes
everything it wrote. Needs about 1.6x the corpus size of free disk (checked first).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time, torch
from toylens.config import LmTaskConfig, validate_config
from toylens.model import Transformer
from toylens.tasks import build_task
from toylens.train.optim import build_optimizer

corpus, cache, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
task = build_task(LmTaskConfig(dataset="files", files=[corpus + "/*.txt"], tokenizer="gpt2", n_ctx=128,
                               cache_dir=cache, val_fraction=0.001, test_fraction=0.001))
t1 = time.perf_counter()
hwm_tokenize = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
cfg = validate_config({"task": {"name": "lm", "dataset": "files", "files": ["x"]},
                       "model": {"n_layers": 1, "n_heads": 4, "d_model": 32, "attn_only": True},
                       "train": {"lr": 0.003}})
cfg = cfg.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx)
model = Transformer(cfg.model, seed=0)
opt = build_optimizer(model, cfg.train)
data, gen = task.splits["train"], torch.Generator().manual_seed(0)
for step in range(steps):
    batch = data.batch(torch.randint(len(data), (8,), generator=gen))
    loss = task.loss(model(batch.tokens), batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
t2 = time.perf_counter()
print(json.dumps({"tokens": int(len(data.tokens)), "windows": len(data), "tokenize_s": t1 - t0,
                  "train_s": t2 - t1, "loss": loss.item(), "hwm_tokenize": hwm_tokenize}))
"""


def generate(root: Path, n_bytes: int, seed: int = 0) -> int:
    """Text files under root, about n_bytes in all, of words drawn with their WikiText
    frequencies (so GPT-2 tokens are about as long as in real text); returns the exact size."""
    from toylens.tasks.sources import BUNDLED, _bundled_split

    split = _bundled_split(BUNDLED[("wikitext", "wikitext-103-v1")]["test"])
    counts: dict[bytes, int] = {}
    for batch in split.batches():
        for line in batch["text"]:
            for word in line.encode().split():
                counts[word] = counts.get(word, 0) + 1
    words = np.array(list(counts), dtype=object)
    weights = np.array(list(counts.values()), dtype=np.float64)
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    drawn = words[rng.choice(len(words), 4_000_000, p=weights)]  # about 25 MB of distinct text
    breaks = np.cumsum(rng.integers(20, 200, 60_000))
    block = b"".join(b" ".join(line) + b"\n" for line in np.split(drawn, breaks[breaks < len(drawn)]))
    written, per_file = 0, n_bytes // 10 + 1
    for i in range(10):  # each file repeats the block (tokenized in full all the same)
        with open(root / f"part-{i:02d}.txt", "wb") as f:
            size = 0
            while size < per_file:
                part = block[: per_file - size]
                f.write(part)
                size += len(part)
        written += size
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="corpus size in GB (10^9 bytes)")
    parser.add_argument("--steps", type=int, default=200, help="training steps after tokenizing")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where to put the corpus and cache")
    args = parser.parse_args()
    n_bytes = int(args.gb * 1e9)
    free = shutil.disk_usage(args.tmp).free
    print(f"free disk in {args.tmp}: {free / 1e9:.1f} GB")
    if free < 1.6 * n_bytes + 1e9:
        sys.exit(f"need about {(1.6 * n_bytes + 1e9) / 1e9:.1f} GB free in {args.tmp}")
    work = Path(tempfile.mkdtemp(dir=args.tmp, prefix="toylens-bench-data-"))
    try:
        (work / "corpus").mkdir()
        t0 = time.perf_counter()
        size = generate(work / "corpus", n_bytes)
        print(f"corpus: {size / 1e9:.3f} GB of text in 10 files ({time.perf_counter() - t0:.0f}s to generate)")
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(work / "corpus"), str(work / "cache"), str(args.steps)],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            sys.exit(proc.stderr)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
        cache = sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file())
        print(
            f"tokenized {result['tokens']:,} GPT-2 tokens in {result['tokenize_s']:.0f}s "
            f"({size / 1e6 / result['tokenize_s']:.1f} MB/s); cache {cache / 1e6:.0f} MB on disk"
        )
        print(
            f"trained {args.steps} steps on random windows of the memory-mapped stream in {result['train_s']:.0f}s "
            f"(final loss {result['loss']:.2f})"
        )
        print(
            f"peak RSS: {result['hwm_tokenize'] / 2**30:.2f} GiB while tokenizing, {peak / 2**30:.2f} GiB over "
            f"tokenizing + training (corpus {size / 2**30:.2f} GiB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
