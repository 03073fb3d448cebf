"""The GPU speed paths against the plain training step: tokens/s with and without each, and how
closely each follows the plain run's losses.

    python bench/speedpaths.py --device cuda --steps 50
    python bench/speedpaths.py configs/sort-no-decay.yaml --device cpu --steps 2 --compile-backend aot_eager

One model (by default the full WikiText 1-layer config run offline on the bundled sample, as
bench/fulltext.py does) is trained from the same initialisation on the same batches four times,
each differing from the plain run in one thing:

  plain    float32, eager, torch's for-loop AdamW
  fused    the fused AdamW kernel (what training picks on CUDA)
  bf16     train.precision=bf16 (bfloat16 autocast forward, float32 loss and weights)
  compile  train.compile=true (the forward under torch.compile)

Batches are read and moved to the device before timing; warm-up steps (where compile compiles)
are not timed. Prints one JSON line: per path its tokens/s, `speedup` over plain, and agreement:
`loss_rel` = |mean loss of the last 5 steps - plain's| / plain's, and `first_rel` = the largest
relative loss difference over the first 5 steps (before chaotic divergence can build up). Exits 1
when a path disagrees: bf16 beyond 10% (loss_rel), fused or compile beyond 1e-3 (first_rel), or
fails to run (its entry is then {"error": ...}, and the other paths still run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from toylens.config import RunConfig, load_config
from toylens.device import resolve_device
from toylens.memory import reuse_freed_memory
from toylens.model import Transformer
from toylens.rundir import RunDir
from toylens.tasks import Batch, Task, build_task
from toylens.train import compiled
from toylens.train.loop import Trainer, epoch_order
from toylens.train.optim import build_optimizer
from toylens.train.state import TrainState

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "wikitext-1l-attn-lm.full.yaml"
OFFLINE = ["task.source=bundled", "task.subset=wikitext-103-v1"]
PATHS = {  # path -> (train overrides, AdamW kernel flags)
    "plain": ({}, {"foreach": False, "fused": False}),
    "fused": ({}, {"foreach": False, "fused": True}),
    "bf16": ({"precision": "bf16"}, {"foreach": False, "fused": False}),
    "compile": ({"compile": True}, {"foreach": False, "fused": False}),
}
LIMITS = {"bf16": ("loss_rel", 0.10), "fused": ("first_rel", 1e-3), "compile": ("first_rel", 1e-3)}
WARMUP = 3


def run_path(
    path: str, cfg: RunConfig, task: Task, batches: list[Batch], device: torch.device
) -> tuple[float, list[float]]:
    """Train `cfg` with the path's changes on `batches`; (seconds of the timed steps, every step's loss)."""
    overrides, kernel = PATHS[path]
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=overrides)})
    model = Transformer(cfg.model, seed=cfg.seed).to(device)
    opt = build_optimizer(model, cfg.train)
    for group in opt.param_groups:
        group.update(kernel)
    losses = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, task, model, opt, RunDir(Path(tmp) / "r"), TrainState(), progress=False)
        for batch in batches[:WARMUP]:
            losses.append(trainer.step(batch)[0])
        _sync(device)
        start = time.perf_counter()
        for batch in batches[WARMUP:]:
            losses.append(trainer.step(batch)[0])
        _sync(device)
        seconds = time.perf_counter() - start
    return seconds, torch.stack(losses).tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def agreement(losses: list[float], plain: list[float]) -> dict[str, float]:
    """loss_rel (the last 5 steps' mean) and first_rel (the first 5 steps, step by step) against plain."""
    tail = min(5, len(plain))
    last, ref = sum(losses[-tail:]) / tail, sum(plain[-tail:]) / tail
    first = max(abs(a - b) / abs(b) for a, b in zip(losses[:5], plain[:5]))
    return {"loss_rel": abs(last - ref) / abs(ref), "first_rel": first}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", default=str(DEFAULT))
    ap.add_argument(
        "--set", action="append", default=None, help=f"config override (default config: {' '.join(OFFLINE)})"
    )
    ap.add_argument("--steps", type=int, default=50, help="timed optimisation steps per path")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile-backend", default=compiled.BACKEND, help="aot_eager: the CPU smoke run")
    ap.add_argument("--only", default=",".join(PATHS), help="comma-separated paths besides plain")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        reuse_freed_memory()  # as train() does
    compiled.BACKEND = args.compile_backend
    default_set = OFFLINE if Path(args.config).resolve() == DEFAULT else []
    cfg = load_config(args.config, default_set if args.set is None else args.set)
    task = build_task(cfg.task)
    cfg = cfg.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx)
    data, bs = task.splits[task.train_split], cfg.train.batch_size
    total = WARMUP + args.steps
    order = torch.cat([epoch_order(cfg.seed, e, len(data)) for e in range(-(-total * bs // len(data)))])
    batches = [data.batch(order[i * bs : (i + 1) * bs]).to(device) for i in range(total)]
    tokens = args.steps * bs * cfg.model.n_ctx
    out: dict = {"device": str(device), "batch": bs, "n_ctx": cfg.model.n_ctx, "steps": args.steps}
    seconds, plain = run_path("plain", cfg, task, batches, device)
    out["plain"] = {"tok_s": round(tokens / seconds, 1), "loss": round(sum(plain[-5:]) / len(plain[-5:]), 5)}
    failed = []
    for path in [p for p in args.only.split(",") if p in PATHS and p != "plain"]:
        try:
            seconds, losses = run_path(path, cfg, task, batches, device)
        except Exception as e:  # noqa: BLE001 - one path failing (e.g. no triton for compile) is reported, the rest run
            out[path] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            failed.append(f"{path}: {out[path]['error']}")
            continue
        agree = agreement(losses, plain)
        out[path] = {
            "tok_s": round(tokens / seconds, 1),
            "speedup": round(tokens / seconds / out["plain"]["tok_s"], 3),
            **{k: float(f"{v:.3g}") for k, v in agree.items()},
        }
        key, limit = LIMITS[path]
        if agree[key] > limit:
            failed.append(f"{path}: {key} {agree[key]:.3g} > {limit}")
    print(json.dumps(out))
    for line in failed:
        print(f"disagrees: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
