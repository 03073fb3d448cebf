"""What several benches share: the model shapes they time, best-of-N timing, and the LLC benches'
sampler arguments and report lines. The benches run as scripts (`python bench/x.py`), so this
module is imported as `common`; it needs only torch and toylens (the LLC benches run it in their
own environments with devinterp).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from toylens import load
from toylens.config import ModelConfig
from toylens.llc import LLCSettings
from toylens.model import Transformer

ARCHS = {
    # configs/sort-*.yaml: 1 layer, attention + MLP, sequences of 20
    "sort": dict(n_layers=1, n_heads=2, d_model=64, d_head=32, d_mlp=256, d_vocab=51, d_vocab_out=50, n_ctx=20),
    # 2 layers with MLPs, sequences of 64
    "mlp2": dict(n_layers=2, n_heads=4, d_model=128, d_mlp=512, d_vocab=65, d_vocab_out=64, n_ctx=64),
    # the induction study: 2 layers, attention only, sequences of 128
    "induction": dict(n_layers=2, n_heads=4, d_model=128, attn_only=True, d_vocab=65, d_vocab_out=64, n_ctx=128),
}


def make_model(args: argparse.Namespace) -> Transformer:
    """`--run`'s final model, else a seeded random model of shape `--arch`."""
    if args.run:
        return load(args.run).model
    cfg = ModelConfig(**ARCHS[args.arch])
    return Transformer(cfg.resolved(cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx), seed=0)


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], Any]) -> tuple[float, Any]:
    """The least wall time of `repeats` calls of `fn` (the least disturbed one: the machine may be
    shared), `sync` before and after each, and the last call's result."""
    out, times = None, []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times), out


def add_llc_args(ap: argparse.ArgumentParser, **defaults: Any) -> None:
    """The sampler settings both tools take (--epsilon ... --burnin, LLCSettings' defaults unless
    `defaults` names others), and --threads, --device, --no-devinterp, --mala-every."""
    base = LLCSettings()
    for name in ("epsilon", "gamma", "batch_size", "chains", "draws", "burnin"):
        kind = float if name in ("epsilon", "gamma") else int
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=defaults.get(name, getattr(base, name)))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="torch device for both tools (auto, cpu, cuda)")
    ap.add_argument("--no-devinterp", action="store_true", help="time toylens alone")
    ap.add_argument(
        "--mala-every",
        type=int,
        default=base.mala_every,
        help="toylens's MALA diagnostic (devinterp computes none); 0 for the same work",
    )


def llc_settings(args: argparse.Namespace, **extra: Any) -> LLCSettings:
    """`add_llc_args`'s settings, without weight decay (devinterp samples without it)."""
    return LLCSettings(
        epsilon=args.epsilon,
        gamma=args.gamma,
        batch_size=args.batch_size,
        chains=args.chains,
        draws=args.draws,
        burnin=args.burnin,
        weight_decay=0.0,
        mala_every=args.mala_every,
        **extra,
    )


def agrees(ours: Any, theirs: dict[str, float]) -> bool:
    """toylens's estimate and devinterp's within 2 combined standard errors."""
    return abs(ours.llc - theirs["llc"]) <= 2 * math.sqrt(ours.llc_se**2 + theirs["se"] ** 2)


def print_times(ours: tuple[float, float], theirs: tuple[float, float]) -> None:
    """The wall and CPU seconds of each tool, (wall, cpu), and their ratios."""
    (t_ours, c_ours), (t_theirs, c_theirs) = ours, theirs
    print(f"wall time: toylens {t_ours:.1f}s, devinterp {t_theirs:.1f}s, ratio {t_theirs / t_ours:.2f}x")
    print(
        f"CPU time:  toylens {c_ours:.1f}s, devinterp {c_theirs:.1f}s, ratio {c_theirs / c_ours:.2f}x "
        "(process CPU seconds, all threads: steadier than wall time on a shared machine)"
    )
