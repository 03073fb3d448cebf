"""Acceptance figures for the text tasks, offline, on the samples shipped with toylens.

    OMP_NUM_THREADS=2 .venv/bin/python bench/text_accuracy.py --out /tmp/accept

For each IMDB classify quick config: test accuracy on the 2,000 bundled test reviews at the
checkpoint with the best validation accuracy (validation = 10% of the bundled training reviews;
the test split is used for nothing else). For every IMDB and WikiText lm quick config of Study 1:
test loss at the best-validation checkpoint against a unigram model fitted to the same training
tokens over the run's own vocabulary (add-one smoothing; with a compact vocabulary the <other> id
is one class in both), and the share of test tokens in <other>. Prints one line per run with wall
times.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import toylens
from toylens.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLASSIFY = ["imdb-1l-attn-bert-classify.quick", "imdb-1l-attn-gpt2-classify.quick"]
LM = [
    "imdb-1l-attn-gpt2-lm.quick",
    "imdb-2l-attn-gpt2-lm.quick",
    "imdb-2l-mlp-gpt2-lm.quick",
    "imdb-1l-attn-bert-lm.quick",
    "wikitext-1l-attn-600k-lm.quick",
    "wikitext-1l-attn-lm.quick",
    "wikitext-2l-attn-lm.quick",
]


def train_best(name: str, out: Path, cache: str) -> tuple[toylens.Loaded, float]:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", ["task.source=bundled", f"task.cache_dir={cache}"])
    start = time.perf_counter()
    result = toylens.train(cfg, out, overwrite=True, progress=False)
    return toylens.load(result.run_dir, checkpoint="best"), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs-accept"))
    parser.add_argument("--cache-dir", default="~/.cache/toylens")
    parser.add_argument("--only", nargs="*", help="config names to run (default: all)")
    args = parser.parse_args()
    for name in CLASSIFY + LM:
        if args.only and name not in args.only:
            continue
        best, wall = train_best(name, args.out, args.cache_dir)
        metrics = best.task.evaluate(best.model, "test", 256)
        val = best.task.evaluate(best.model, "val", 256)
        where = f"best = epoch {best.epoch} of {best.config.train.epochs} epochs, {wall:.0f}s"
        if name in CLASSIFY:
            print(f"{name}: test acc {metrics['test/acc']:.4f} (val acc {val['val/acc']:.4f}; {where})", flush=True)
        else:
            unigram = best.task.unigram_loss("test")
            gap = unigram - metrics["test/loss"]
            print(
                f"{name}: test loss {metrics['test/loss']:.4f} vs unigram {unigram:.4f}: {gap:.3f} nat better "
                f"(val loss {val['val/loss']:.4f}; <other> {metrics.get('test/other_frac', 0.0):.1%} of test "
                f"tokens; d_vocab {best.config.model.d_vocab}; {where})",
                flush=True,
            )


if __name__ == "__main__":
    main()
