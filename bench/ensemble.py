"""Vectorised ensemble vs one model after another: aggregate training tokens/s on one device.

    python bench/ensemble.py                          # CPU, 32 members
    python bench/ensemble.py --device cuda --steps 200

Members are the study-2 sorting model (configs/sort-no-decay.yaml: 1 layer, d_model 64, MLP 256,
L1 on the MLP activations, batch 256 x 20 tokens), differing in seed and weight decay. Both sides
run toylens's real training steps (data gathering, forward, L1 penalty, backward, clipping,
AdamW): "sequential" is `Trainer.step` for each member in turn, "ensemble" is
`EnsembleTrainer.step` for all members at once. Evaluation and checkpointing (the same per
member on both sides) are left out. Prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
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
from toylens.train.ensemble import EnsembleTrainer
from toylens.train.loop import Trainer, epoch_order
from toylens.train.optim import build_optimizer
from toylens.train.state import TrainState

ROOT = Path(__file__).resolve().parents[1]


def make_members(n: int, device: torch.device, out: Path) -> list[Trainer]:
    base = load_config(ROOT / "configs" / "sort-no-decay.yaml")
    task = build_task(base.task)
    trainers = []
    for k in range(n):
        cfg = base.model_copy(update={"name": f"m{k}", "seed": k})
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"weight_decay": [0.0, 0.1, 1.0][k % 3]})})
        cfg = cfg.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx)
        model = Transformer(cfg.model, seed=cfg.seed).to(device)
        trainers.append(
            Trainer(
                cfg,
                task,
                model,
                build_optimizer(model, cfg.train),
                RunDir(out / cfg.name),
                TrainState(),
                progress=False,
            )
        )
    return trainers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sequential(members: list[Trainer], steps: int, device: torch.device) -> float:
    orders = [epoch_order(m.cfg.seed, 0, len(m.data)) for m in members]
    bs = members[0].cfg.train.batch_size
    sync(device)
    t0 = time.perf_counter()
    for m, order in zip(members, orders):
        for i in range(steps):
            m.step(m.data.batch(order[i * bs : (i + 1) * bs]).to(device))
    sync(device)
    return time.perf_counter() - t0


def time_ensemble(ens: EnsembleTrainer, steps: int, device: torch.device) -> float:
    orders = torch.stack([epoch_order(m.cfg.seed, 0, len(m.data)) for m in ens.members])
    bs = ens.batch_size
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        idx = orders[:, i * bs : (i + 1) * bs]
        ens.step(idx, ens.data.batch(idx.flatten()).to(device))
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per member (after 2 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timings; the median is reported")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        reuse_freed_memory()  # as train() does
    with tempfile.TemporaryDirectory() as tmp:
        solo = make_members(args.members, device, Path(tmp))
        ens = EnsembleTrainer(make_members(args.members, device, Path(tmp)), progress=False)
        time_sequential(solo, 2, device)
        time_ensemble(ens, 2, device)
        seq_times, ens_times = [], []
        for _ in range(args.repeats):
            seq_times.append(time_sequential(solo, args.steps, device))
            ens_times.append(time_ensemble(ens, args.steps, device))
    cfg = solo[0].cfg
    tokens = args.members * args.steps * cfg.train.batch_size * cfg.model.n_ctx
    seq, ens_t = statistics.median(seq_times), statistics.median(ens_times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}")
    print(f"{args.members} members x {args.steps} steps x {cfg.train.batch_size} x {cfg.model.n_ctx} tokens")
    print(f"one after another: {tokens / seq:12.0f} tokens/s  ({seq:.2f} s)")
    print(f"ensemble:          {tokens / ens_t:12.0f} tokens/s  ({ens_t:.2f} s)")
    print(f"ratio (ensemble / one after another): {seq / ens_t:.2f}x")


if __name__ == "__main__":
    main()
