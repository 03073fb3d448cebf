"""Activation patching: TransformerLens's get_act_patch_* against toylens's batched Patcher.

Same weights (the toylens model exported with toylens.export), same clean/corrupted inputs, same
metric; both sides include computing their caches. Prints the best of --repeats wall times of each
and the ratio for
the full residual-stream grid [layer, pos] and the head-by-position grid [layer, pos, head], and
checks that the two grids agree.

    OMP_NUM_THREADS=2 python bench/patching.py                     # sorting-sized model, CPU
    python bench/patching.py --arch induction --device cuda         # 2-layer attention-only, n_ctx 128
    python bench/patching.py --run runs/sort-no-decay               # a trained run instead of random weights
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens prints a progress bar per grid

import torch  # noqa: E402
from common import ARCHS, make_model, timed  # noqa: E402

from toylens.analysis.metrics import LogitDiff  # noqa: E402
from toylens.analysis.patching import Patcher  # noqa: E402
from toylens.device import resolve_device  # noqa: E402
from toylens.export import to_transformer_lens  # noqa: E402
from toylens.memory import reuse_freed_memory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=list(ARCHS), default="sort")
    ap.add_argument("--run", default=None, help="use this trained run's final model instead of random weights")
    ap.add_argument("--batch", type=int, default=32, help="clean/corrupted pairs")
    ap.add_argument("--pos", type=int, default=None, help="sequence length (default: n_ctx)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-transformer-lens", action="store_true", help="time toylens alone")
    args = ap.parse_args()
    with_tl = not args.no_transformer_lens and importlib.util.find_spec("transformer_lens") is not None
    if not with_tl:
        reason = "--no-transformer-lens" if args.no_transformer_lens else "transformer-lens is not installed"
        print(f"TransformerLens: skipped ({reason})")

    device = resolve_device(args.device)
    if device.type == "cpu":
        reuse_freed_memory()  # as `toylens analyze` does; process-wide, so both sides alike
    model = make_model(args).to(device).eval()
    tl = to_transformer_lens(model, device=device) if with_tl else None
    cfg = model.cfg
    pos = args.pos or cfg.n_ctx
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab_out, (args.batch, pos), generator=g).to(device)
    corrupted = clean.clone()
    corrupted[:, pos // 3] = (clean[:, pos // 3] + 1) % cfg.d_vocab_out
    metric = LogitDiff(
        torch.randint(0, cfg.d_vocab_out, (args.batch, pos), generator=g).to(device),
        torch.randint(0, cfg.d_vocab_out, (args.batch, pos), generator=g).to(device),
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    print(
        f"model: {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, attn_only {cfg.attn_only}; "
        f"batch {args.batch} x {pos} positions; device {device} ({platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}); torch {torch.__version__}"
    )
    grids = {
        "resid_pre": ("resid_pre", "get_act_patch_resid_pre"),
        "head_out_by_pos": ("head_out_by_pos", "get_act_patch_attn_head_out_by_pos"),
    }
    for label, (ours_name, tl_name) in grids.items():
        with torch.no_grad():

            def run_tl(tl_name=tl_name):
                from transformer_lens import patching as tl_patching

                assert tl is not None
                _, cache = tl.run_with_cache(clean)
                return getattr(tl_patching, tl_name)(tl, corrupted, cache, lambda logits: metric(logits).mean())

            def run_ours(ours_name=ours_name):
                return getattr(Patcher(model, clean, corrupted, metric), ours_name)().values

            t_ours, got = timed(run_ours, args.repeats, sync)
            if not with_tl:
                print(f"{label:16s} grid {tuple(got.shape)}: toylens {t_ours:7.3f} s")
                continue
            t_tl, ref = timed(run_tl, args.repeats, sync)
        diff = (got.to(ref.device) - ref).abs().max().item()
        print(
            f"{label:16s} grid {tuple(got.shape)}: TransformerLens {t_tl:8.3f} s   toylens {t_ours:7.3f} s   "
            f"ratio {t_tl / t_ours:6.1f}x   max |diff| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
