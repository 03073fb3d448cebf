"""toylens training vs a TransformerLens training loop on the same config: tokens/s.

    pip install transformer-lens         # only for this script (check it keeps your torch)
    python bench/train.py                # CPU
    python bench/train.py --device cuda --steps 300

The config is the study-2 sorting model (configs/sort-no-decay.yaml). The TransformerLens side is
the loop a user would write around `HookedTransformer` with the same shapes, init scale, AdamW
groups (toylens's `decays`, the parameter names are the same), schedule, L1 penalty through a
hook on `blocks.0.mlp.hook_post`, masked cross-entropy, clipping and batches. The toylens side is
`Trainer.step`, what `toylens train` runs. Timings alternate between the two; medians are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from toylens.config import load_config
from toylens.device import resolve_device
from toylens.memory import reuse_freed_memory
from toylens.model import Transformer
from toylens.rundir import RunDir
from toylens.tasks import IGNORE, build_task
from toylens.train.loop import Trainer, epoch_order
from toylens.train.optim import build_optimizer, lr_at, set_lr
from toylens.train.regularisers import decays
from toylens.train.state import TrainState

ROOT = Path(__file__).resolve().parents[1]


class TransformerLensLoop:
    """A plain training loop around transformer_lens.HookedTransformer."""

    def __init__(self, cfg, device: torch.device):
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        m = cfg.model
        tl_cfg = HookedTransformerConfig(
            n_layers=m.n_layers,
            d_model=m.d_model,
            d_head=m.d_head,
            n_heads=m.n_heads,
            d_mlp=m.d_mlp,
            d_vocab=m.d_vocab,
            d_vocab_out=m.d_vocab_out,
            n_ctx=m.n_ctx,
            act_fn=m.act_fn,
            normalization_type=None,
            attn_only=m.attn_only,
            initializer_range=m.init_range,
            seed=cfg.seed,
            device=str(device),
        )
        self.cfg, self.model = cfg, HookedTransformer(tl_cfg)
        named = list(self.model.named_parameters())
        t = cfg.train
        groups = [
            {"params": [p for n, p in named if decays(n, t.weight_decay_on)], "weight_decay": t.weight_decay},
            {"params": [p for n, p in named if not decays(n, t.weight_decay_on)], "weight_decay": 0.0},
        ]
        self.opt = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas)
        self.terms: list[torch.Tensor] = []
        self.hooks = [(name, self._l1) for name in t.l1.hooks]
        self.step_count, self.total = 0, 10_000

    def _l1(self, act: torch.Tensor, hook: object) -> None:
        self.terms.append(act.abs().sum(-1).mean())

    def step(self, tokens: torch.Tensor, targets: torch.Tensor) -> None:
        set_lr(self.opt, lr_at(self.step_count, self.total, self.cfg.train))
        with self.model.hooks(fwd_hooks=self.hooks):
            logits = self.model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        loss = loss + self.cfg.train.l1.coef * torch.stack(self.terms).sum()
        self.terms = []
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self.step_count += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tl_missing() -> str | None:
    """Why the TransformerLens loop cannot run here (None: it can)."""
    if importlib.util.find_spec("transformer_lens") is None:
        return "transformer-lens is not installed"
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        from importlib.metadata import version

        return f"transformer-lens {version('transformer-lens')} has no HookedTransformer (removed in 4.0)"
    return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def timed(step_fn, batches, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for batch in batches:
        step_fn(batch)
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-transformer-lens", action="store_true", help="time toylens alone")
    args = parser.parse_args()
    reason = tl_missing() if not args.no_transformer_lens else "--no-transformer-lens"
    device = resolve_device(args.device)
    if device.type == "cpu":
        reuse_freed_memory()  # as train() does; process-wide, so TransformerLens gets it too
    cfg = load_config(ROOT / "configs" / "sort-no-decay.yaml")
    task = build_task(cfg.task)
    cfg = cfg.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx)
    data = task.splits["train"]
    order = epoch_order(cfg.seed, 0, len(data))
    bs = cfg.train.batch_size
    batches = [data.batch(order[i * bs : (i + 1) * bs]).to(device) for i in range(args.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        model = Transformer(cfg.model, seed=cfg.seed).to(device)
        ours = Trainer(
            cfg, task, model, build_optimizer(model, cfg.train), RunDir(Path(tmp) / "r"), TrainState(), progress=False
        )
        timed(ours.step, batches[:3], device)  # warm-up
        if reason:
            t_alone = [timed(ours.step, batches, device) for _ in range(args.repeats)]
            print(f"device: {device_name(device)}, torch {torch.__version__}; TransformerLens: skipped ({reason})")
            print(f"{args.steps} steps x {bs} x {cfg.model.n_ctx} tokens, median of {args.repeats}")
            print(f"toylens:          {args.steps * bs * cfg.model.n_ctx / statistics.median(t_alone):10.0f} tokens/s")
            return
        theirs = TransformerLensLoop(cfg, device)
        # Same model: TransformerLens takes toylens's weights (same names and shapes) and gives
        # the same logits, so both sides train the same network from the same start.
        missing, unexpected = theirs.model.load_state_dict(model.state_dict(), strict=False)
        assert not unexpected and all(k.endswith(("mask", "IGNORE")) for k in missing), (missing, unexpected)
        with torch.no_grad():
            gap = (theirs.model(batches[0].tokens) - model(batches[0].tokens)).abs().max().item()
        assert gap < 1e-4, f"TransformerLens logits differ by {gap}"
        timed(lambda b: theirs.step(b.tokens, b.targets), batches[:3], device)  # warm-up
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            t_ours.append(timed(ours.step, batches, device))
            t_theirs.append(timed(lambda b: theirs.step(b.tokens, b.targets), batches, device))
    from importlib.metadata import version

    tokens = args.steps * bs * cfg.model.n_ctx
    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    print(f"device: {device_name(device)}, torch {torch.__version__}, transformer-lens {version('transformer-lens')}")
    print(f"{args.steps} steps x {bs} x {cfg.model.n_ctx} tokens, median of {args.repeats}")
    print(f"toylens:          {tokens / a:10.0f} tokens/s")
    print(f"TransformerLens:  {tokens / b:10.0f} tokens/s")
    print(f"ratio (toylens / TransformerLens): {b / a:.2f}x")


if __name__ == "__main__":
    main()
