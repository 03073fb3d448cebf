"""Training throughput and peak memory of one shipped text config: tokens/s of `Trainer.step`.

    python bench/fulltext.py --device cuda --steps 200
    python bench/fulltext.py configs/wikitext-1l-attn-lm.full.yaml --set train.batch_size=8 --steps 5 --device cpu

The config is read with its `--set` overrides (by default the full WikiText 1-layer config made to
run offline, as tests/presets/test_presets.py does: the bundled validation split of wikitext-103-v1 in
place of the Hub's raw text). The model is built as `toylens train` builds it and `--steps`
optimisation steps (after 3 warm-up steps) run on batches drawn in the epoch's order, wrapping
around the data when it is shorter; evaluation and checkpoints are left out, so the figure is the
training step alone. Prints one JSON line: tokens/s, seconds, parameters, and on CUDA the peak
memory torch allocated (torch.cuda.max_memory_allocated: weights, AdamW moments, activations and
the [batch, n_ctx, d_vocab] logits with their gradient).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from toylens.config import load_config
from toylens.device import resolve_device
from toylens.memory import reuse_freed_memory
from toylens.model import Transformer
from toylens.rundir import RunDir
from toylens.tasks import build_task
from toylens.train.loop import Trainer, epoch_order
from toylens.train.optim import build_optimizer
from toylens.train.state import TrainState

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "wikitext-1l-attn-lm.full.yaml"
OFFLINE = ["task.source=bundled", "task.subset=wikitext-103-v1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", default=str(DEFAULT))
    ap.add_argument("--set", action="append", default=None, help=f"config override (default: {' '.join(OFFLINE)})")
    ap.add_argument("--steps", type=int, default=100, help="timed optimisation steps")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        reuse_freed_memory()  # as train() does
    cfg = load_config(args.config, OFFLINE if args.set is None else args.set)
    t0 = time.perf_counter()
    task = build_task(cfg.task)
    data_s = time.perf_counter() - t0
    cfg = cfg.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx)
    model = Transformer(cfg.model, seed=cfg.seed).to(device)
    bs, n_ctx = cfg.train.batch_size, cfg.model.n_ctx
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            cfg, task, model, build_optimizer(model, cfg.train), RunDir(Path(tmp) / "r"), TrainState(), progress=False
        )
        n = len(trainer.data)
        order = torch.cat([epoch_order(cfg.seed, e, n) for e in range(-(-(args.steps + 3) * bs // n))])

        def run(first: int, steps: int) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for i in range(first, first + steps):
                trainer.step(trainer.data.batch(order[i * bs : (i + 1) * bs]).to(device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

        run(0, 3)  # warm-up: kernels chosen, allocator grown
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = run(3, args.steps)
    out = {
        "config": Path(args.config).name,
        "overrides": OFFLINE if args.set is None else args.set,
        "device": str(device),
        "params": sum(p.numel() for p in model.parameters()),
        "batch": bs,
        "n_ctx": n_ctx,
        "d_vocab": cfg.model.d_vocab,
        "steps": args.steps,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(args.steps * bs * n_ctx / seconds, 1),
        "data_s": round(data_s, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
