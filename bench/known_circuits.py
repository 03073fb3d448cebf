"""Edge scores against exact edge effects on a trained run (BENCHMARKS.md, "Known circuits").

For the run's task pairs (`task.corrupted_pair`, the task's patching metric) it scores every edge
four ways: EAP, EAP-IG (--ig-steps), exact edge ablation (the clean run with that edge alone
ablated to the corrupted run, one forward per edge: the metric drop) and exact edge patching
(`path_patching`: the corrupted run with that edge alone patched clean). It prints, for each, the
ranks (of all edges, by |score|) of the strongest previous-token head's edges into every
induction head's key (on an induction-style run), and the fraction of the gap recovered by the
strongest n edges, for a few n.

    OMP_NUM_THREADS=1 python bench/known_circuits.py runs/induction-2l
    OMP_NUM_THREADS=1 python bench/known_circuits.py runs/sort-no-decay --sizes 2 4 6 8
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from toylens import load
from toylens.analysis import repeated_token_scores
from toylens.analysis.edge_attribution import circuit, edge_attribution, faithfulness
from toylens.analysis.graph import edge_mask
from toylens.analysis.metrics import make_metric
from toylens.analysis.patching import Patcher
from toylens.analysis.path_patching import path_patching


def edge_ablation(model, pair, metric) -> torch.Tensor:
    """[writer, reader]: metric(clean) - metric(clean with that edge alone ablated), NaN off the graph."""
    mask = edge_mask(model)
    out = torch.full(mask.shape, float("nan"), dtype=torch.float64)
    for i, j in mask.nonzero().tolist():
        keep = mask.clone()
        keep[i, j] = False
        f = faithfulness(model, pair.clean, pair.corrupted, metric, keep)
        out[i, j] = f.clean - f.metric_value
    return out


def exact_patching(model, pair, metric) -> torch.Tensor:
    """[writer, reader]: metric(corrupted with that edge alone patched clean) - metric(corrupted)."""
    grid = path_patching(Patcher(model, pair.clean, pair.corrupted, metric))
    return grid.values - grid.corrupted


def ranks(scores: torch.Tensor, cells: list[tuple[int, int]]) -> list[int]:
    order = scores.nan_to_num(0).abs().flatten().argsort(descending=True).tolist()
    return [order.index(i * scores.shape[1] + j) + 1 for i, j in cells]


def known_edges(run, writers: list[str], readers: list[str]) -> tuple[list[str], list[tuple[int, int]]]:
    """The strongest layer-0 previous-token head -> every layer-1 induction head's key (scores >= 0.4)."""
    if run.model.cfg.n_layers < 2 or run.task.bos_token() is None:
        return [], []
    s = repeated_token_scores(run.model, run.task.random_token_ids(), run.task.bos_token(), n_seq=100, half=50)
    prev, heads = int(s.scores["previous_token"][0].argmax()), (s.scores["induction"][1] >= 0.4).nonzero()
    names = [(f"L0H{prev}", f"L1H{int(h)}.k") for h in heads.flatten()]
    return [f"{w}->{r}" for w, r in names], [(writers.index(w), readers.index(r)) for w, r in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run directory")
    parser.add_argument("--checkpoint", default="final")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 8, 10, 12, 16, 20])
    args = parser.parse_args()
    run = load(args.run, args.checkpoint, device="cpu")
    model, pair = run.model, run.task.corrupted_pair(args.pairs, 0)
    metric = make_metric(run.task.patch_metric or "neg_loss", pair.answers, pair.wrong)
    methods = {}
    for name, compute in [
        ("EAP", lambda: edge_attribution(model, pair.clean, pair.corrupted, metric).scores),
        (
            f"EAP-IG {args.ig_steps}",
            lambda: edge_attribution(model, pair.clean, pair.corrupted, metric, ig_steps=args.ig_steps).scores,
        ),
        ("exact ablation", lambda: edge_ablation(model, pair, metric)),
        ("exact patching", lambda: exact_patching(model, pair, metric)),
    ]:
        start = time.perf_counter()
        methods[name] = compute()
        print(f"{name}: {time.perf_counter() - start:.1f} s")
    eap = edge_attribution(model, pair.clean, pair.corrupted, metric)
    labels, cells = known_edges(run, eap.writers, eap.readers)
    total = int(edge_mask(model).sum())
    print(f"{total} edges; metric clean {eap.clean:.4g}, corrupted {eap.corrupted:.4g}")
    print(f"{'scores':16s} {' '.join(f'{n:>14s}' for n in labels)}   recovered by the strongest n edges")
    for name, scores in methods.items():
        line = []
        for n in args.sizes:
            keep = circuit(dataclasses.replace(eap, scores=scores), top=n)
            line.append(f"{n}: {faithfulness(model, pair.clean, pair.corrupted, metric, keep).recovered:.3f}")
        print(f"{name:16s} {' '.join(f'{r:>14d}' for r in ranks(scores, cells))}   {', '.join(line)}")


if __name__ == "__main__":
    main()
