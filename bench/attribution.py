"""Attribution patching (node level): TransformerLens 4.3's `attribution_patch` against toylens's
`AttributionPatcher`; and toylens's edge scores (EAP, EAP-IG), circuit faithfulness and exact
direct path patching.

Same weights (the toylens model exported with toylens.export), same clean/corrupted inputs, same
metric (a logit difference with the same answers in every row, because TransformerLens scores the
pairs one at a time with one metric function). Both sides score the embedding (toylens:
resid_pre of layer 0), every head at every position and every MLP output at every position, in
the same convention: (a_clean - a_corrupted) . d metric / d a at the corrupted run, averaged over
the pairs. Prints the best of --repeats wall times of each, the ratio, and the largest difference
of the scores relative to the largest score.

    OMP_NUM_THREADS=2 python bench/attribution.py                   # sorting-sized model, CPU
    python bench/attribution.py --arch induction --device cuda      # 2-layer attention-only, n_ctx 128
                                                                    # (toylens only: TL needs MLPs)
    python bench/attribution.py --run runs/sort-no-decay            # a trained run instead of random weights
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from common import ARCHS, make_model, timed  # noqa: E402
from transformer_lens.patching import get_act_patch_direct_path_all_sources  # noqa: E402
from transformer_lens.tools.analysis.attribution_patching import (  # noqa: E402
    EdgeAttributionConfig,
    attribution_patch,
)

from toylens.analysis.attribution_patching import AttributionPatcher  # noqa: E402
from toylens.analysis.edge_attribution import circuit, edge_attribution, faithfulness  # noqa: E402
from toylens.analysis.graph import edge_mask, writer_outputs  # noqa: E402
from toylens.analysis.metrics import LogitDiff  # noqa: E402
from toylens.analysis.patching import Patcher  # noqa: E402
from toylens.analysis.path_patching import path_patching  # noqa: E402
from toylens.device import resolve_device  # noqa: E402
from toylens.export import to_transformer_lens  # noqa: E402
from toylens.memory import reuse_freed_memory  # noqa: E402


def tl_scores(result, cfg, pos: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """TransformerLens's node scores as toylens's grids: embed [pos], heads [layer, pos, head], mlp [layer, pos]."""
    out = {"embed": torch.zeros(pos), "heads": torch.zeros(cfg.n_layers, pos, cfg.n_heads)}
    if not cfg.attn_only:
        out["mlp_out"] = torch.zeros(cfg.n_layers, pos)
    for node, score in result.node_scores.items():
        if node.kind == "embed":
            out["embed"][node.position] = score
        elif node.kind == "attn_head_out":
            out["heads"][node.layer, node.position, node.head] = score
        else:
            out["mlp_out"][node.layer, node.position] = score
    return out


def edges(model, tl, clean, corrupted, metric, one, repeats: int, sync) -> None:  # noqa: ANN001
    """Edge scores (EAP, EAP-IG with 5 steps) and the faithfulness of their top 10% edges: toylens's
    times; TransformerLens's edge granularity where it runs (not on an exported model in 4.3)."""
    for k in (1, 5):
        t, scores = timed(lambda k=k: edge_attribution(model, clean, corrupted, metric, ig_steps=k), repeats, sync)
        print(f"edge scores {tuple(scores.scores.shape)} (writer x reader), ig_steps {k}: toylens {t:7.3f} s")
    n = max(1, round(0.1 * int(edge_mask(model).sum())))
    keep = circuit(scores, top=n)
    t, f = timed(lambda: faithfulness(model, clean, corrupted, metric, keep), repeats, sync)
    print(f"faithfulness of the top {n} edges by EAP-IG: toylens {t:7.3f} s (recovered {f.recovered:.3f})")
    try:
        config = EdgeAttributionConfig(granularity="edge")
        t_tl, _ = timed(lambda: attribution_patch(tl, clean, corrupted, lambda x: one(x).mean(), config), 1, sync)
        print(f"edge scores: TransformerLens {t_tl:8.3f} s")
    except NotImplementedError as e:
        print(f"edge scores: TransformerLens 4.3 cannot run them on the exported model ({str(e)[:90]}...)")


def paths(model, tl, clean, corrupted, metric, repeats: int, sync) -> None:  # noqa: ANN001
    """Exact direct path patching of every sender -> receiver pair: toylens's stacked passes;
    TransformerLens's get_act_patch_direct_path_all_sources (one forward per path, heads -> q/k/v
    only) where it runs (not on an exported model in 4.3: it needs split q/k/v inputs)."""
    t, grid = timed(lambda: path_patching(Patcher(model, clean, corrupted, metric)), repeats, sync)
    n = int(grid.values.isfinite().sum())
    print(f"path patching, {n} paths (sender x receiver): toylens {t:7.3f} s ({1e3 * t / n:.2f} ms a path)")
    t_loop, loop = timed(lambda: one_forward_per_path(model, clean, corrupted, metric, grid), 1, sync)
    diff = float((loop - grid.values).nan_to_num(0).abs().max())
    print(
        f"path patching, one full forward per path (TransformerLens's algorithm, toylens model): {t_loop:7.3f} s   "
        f"ratio {t_loop / t:5.1f}x   max |diff| {diff:.1e}"
    )
    try:
        with torch.no_grad():
            _, clean_cache = tl.run_with_cache(clean)
            _, corrupted_cache = tl.run_with_cache(corrupted)

        def run_tl() -> None:
            for kind in "qkv":
                get_act_patch_direct_path_all_sources(
                    tl, corrupted, clean_cache, corrupted_cache, lambda x: metric(x).mean(), kind, verbose=False
                )

        t_tl, _ = timed(run_tl, 1, sync)
        print(f"path patching, heads -> q/k/v only: TransformerLens {t_tl:8.3f} s")
    except NotImplementedError as e:
        print(f"path patching: TransformerLens 4.3 cannot run it on the exported model ({str(e)[:90]}...)")


def one_forward_per_path(model, clean, corrupted, metric, grid) -> torch.Tensor:  # noqa: ANN001
    """Every path of `grid` as get_act_patch_direct_path runs it: the whole corrupted forward pass
    with the sender's clean - corrupted output added to the receiver's own input by a hook."""
    cfg = model.cfg
    with torch.no_grad():
        _, c = model.run_with_cache(clean)
        _, k = model.run_with_cache(corrupted)
    delta = writer_outputs(model, c) - writer_outputs(model, k)
    out = torch.full_like(grid.values, float("nan"))
    model.split_qkv_input = True
    for i, j in grid.values.isfinite().nonzero().tolist():
        receiver, head = grid.receivers[j], None
        if receiver == "logits":
            name = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
        elif receiver.startswith("MLP"):
            name = f"blocks.{receiver[3:]}.hook_mlp_in"
        else:
            layer, head = (int(x) for x in receiver.split(".")[0][1:].split("H"))
            name = f"blocks.{layer}.hook_{receiver[-1]}_input"

        def add(x, hook, i=i, head=head):  # noqa: ANN001, ANN202
            x = x.clone()
            if head is None:
                x += delta[i]
            else:
                x[:, :, head] += delta[i]
            return x

        with torch.no_grad():
            out[i, j] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, add)])).mean()
    model.split_qkv_input = False
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=list(ARCHS), default="sort")
    ap.add_argument("--run", default=None, help="use this trained run's final model instead of random weights")
    ap.add_argument("--batch", type=int, default=32, help="clean/corrupted pairs")
    ap.add_argument("--pos", type=int, default=None, help="sequence length (default: n_ctx)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    device = resolve_device(args.device)
    if device.type == "cpu":
        reuse_freed_memory()  # as `toylens analyze` does; process-wide, so both sides alike
    model = make_model(args).to(device).eval()
    tl = to_transformer_lens(model, device=device).eval()
    cfg = model.cfg
    pos = args.pos or cfg.n_ctx
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab_out, (args.batch, pos), generator=g).to(device)
    corrupted = clean.clone()
    corrupted[:, pos // 3] = (clean[:, pos // 3] + 1) % cfg.d_vocab_out
    answers = torch.randint(0, cfg.d_vocab_out, (2, 1, pos), generator=g).to(device)
    metric = LogitDiff(answers[0].expand(args.batch, pos), answers[1].expand(args.batch, pos))
    one = LogitDiff(answers[0], answers[1])  # TransformerLens calls the metric on one pair's logits
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    print(
        f"model: {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, attn_only {cfg.attn_only}; "
        f"batch {args.batch} x {pos} positions; device {device} ({platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}); torch {torch.__version__}"
    )

    def run_tl() -> dict[str, torch.Tensor]:
        return tl_scores(attribution_patch(tl, clean, corrupted, lambda logits: one(logits).mean()), cfg, pos)

    def run_ours() -> dict[str, torch.Tensor]:
        atp = AttributionPatcher(model, clean, corrupted, metric)
        out = {"embed": atp.resid_pre().values[0], "heads": atp.head_out_by_pos().values}
        if not cfg.attn_only:
            out["mlp_out"] = atp.mlp_out().values
        return {k: v - atp.corrupted for k, v in out.items()}

    edges(model, tl, clean, corrupted, metric, one, args.repeats, sync)
    paths(model, tl, clean, corrupted, metric, args.repeats, sync)
    t_ours, got = timed(run_ours, args.repeats, sync)
    if cfg.attn_only:  # TransformerLens 4.3's node graph needs every layer's hook_mlp_out
        n = sum(v.numel() for v in got.values())
        print(f"node scores ({n}): toylens {t_ours:7.3f} s; TransformerLens 4.3 refuses attention-only models")
        return
    t_tl, ref = timed(run_tl, args.repeats, sync)
    scale = max(v.abs().max().item() for v in ref.values())
    diff = max((got[k].cpu() - ref[k]).abs().max().item() for k in ref)
    n = sum(v.numel() for v in ref.values())
    print(
        f"node scores ({n}: embed, heads and MLPs by position): TransformerLens {t_tl:8.3f} s   "
        f"toylens {t_ours:7.3f} s   ratio {t_tl / t_ours:6.1f}x   max |diff| {diff:.1e} "
        f"({diff / scale:.1e} of the largest score)"
    )


if __name__ == "__main__":
    main()
