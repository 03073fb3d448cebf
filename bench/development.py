"""The induction study's developmental landscape against issue 17's acceptance, from saved results only.

    OMP_NUM_THREADS=1 toylens reproduce induction-heads --quick --out RUNS
    python bench/development.py RUNS/induction-heads-quick/induction-2l

Prints, for the run's heads: the refined LLC (RUN/llc/<head>/) just before the phase
change and after it, and their ratio; the heads ranked by that rise, beside each head's final
induction and previous-token scores (head_scores/repeated at the last analysed checkpoint); and the step where the
largest induction score first exceeds 0.3 against the nearest stage boundary (development/stages.json),
counted in checkpoints. "Before" is the last refined-LLC checkpoint before that step, "after" the
first one at or past it ("rise") and the last one ("rise to end").
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TQDM_DISABLE", "1")

from toylens.analysis.attention import HeadScores  # noqa: E402
from toylens.development import STAGES_PATH, Stages  # noqa: E402
from toylens.llc import WHOLE, read_estimates  # noqa: E402
from toylens.report.development import head_clusters  # noqa: E402
from toylens.rundir import RunDir  # noqa: E402
from toylens.rundir.results import has_result, load_result  # noqa: E402

THRESHOLD = 0.3
INDUCTION_HEAD = 0.4


def scores_over_training(run: RunDir, score: str = "induction") -> list[tuple[str, int, list[list[float]]]]:
    out = []
    for c in run.checkpoints():
        rel = f"analysis/{c.name}/head_scores/repeated"
        if has_result(run, rel):
            r = load_result(run, rel)
            assert isinstance(r, HeadScores)
            out.append((c.name, c.step, r.scores[score].tolist()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    run = RunDir(parser.parse_args().run)
    scores = scores_over_training(run)
    prev = scores_over_training(run, "previous_token")[-1][2]
    crossing = next((step for _, step, s in scores if max(max(row) for row in s) > THRESHOLD), None)
    final = scores[-1][2]
    print(f"max induction score first > {THRESHOLD} at step {crossing}")
    restricted = {k: v for k, v in read_estimates(run).items() if k != WHOLE}
    rows = []
    for name, ests in restricted.items():
        layer, head = (int(x) for x in name[1:].split("h"))
        before = [e for e in ests if crossing is None or e["step"] < crossing]
        after = [e for e in ests if crossing is not None and e["step"] >= crossing]
        if not before or not after:
            continue
        b, a, end = before[-1], after[0], ests[-1]
        rows.append(
            (end["llc"] / b["llc"], a["llc"] / b["llc"], name, layer, final[layer][head], b, a, end, prev[layer][head])
        )
    rows.sort(key=lambda r: -r[0])
    print(
        f"{'head':6s} {'induction':>9s} {'prev-tok':>8s} {'λ̂ before':>10s} {'λ̂ after':>10s} {'λ̂ end':>8s}"
        f" {'rise':>6s} {'to end':>7s}"
    )
    for to_end, rise, name, _, score, b, a, end, p in rows:
        print(
            f"{name:6s} {score:9.3f} {p:8.3f} {b['llc']:10.3f} {a['llc']:10.3f} {end['llc']:8.3f}"
            f" {rise:6.2f} {to_end:7.2f}"
            f"   ({b['checkpoint']} -> {a['checkpoint']} -> {end['checkpoint']})"
        )
    heads = [r for r in rows if r[4] > INDUCTION_HEAD]
    others = [r for r in rows if r[4] <= INDUCTION_HEAD]
    if heads and others:
        for key, label in ((1, "rise"), (0, "rise to end")):
            above = min(r[key] for r in heads) > max(r[key] for r in others)
            below = max(r[key] for r in heads) < min(r[key] for r in others)
            verdict = "all rank above" if above else "all rank BELOW" if below else "are mixed with"
            print(
                f"by {label}: heads with induction > {INDUCTION_HEAD} ({', '.join(r[2] for r in heads)}) "
                f"{verdict} the rest "
                f"(lowest of them {min(r[key] for r in heads):.2f}, highest other {max(r[key] for r in others):.2f}); "
                f"layer-0 max {max((r[key] for r in rows if r[3] == 0), default=float('nan')):.2f}"
            )
    groups = head_clusters(restricted)
    if groups and rows:
        induction = {r[2] for r in rows if r[4] > INDUCTION_HEAD}
        clusters = {c: sorted(n for n, g in groups.items() if g == c) for c in sorted(set(groups.values()))}
        same = any(set(members) == induction for members in clusters.values())
        print(
            "clusters of the refined-LLC curves: "
            + "; ".join(f"{c + 1}: {', '.join(m)}" for c, m in clusters.items())
            + f" -> {'the' if same else 'NOT the'} heads with induction > {INDUCTION_HEAD} vs the rest"
        )
    if has_result(run, STAGES_PATH) and crossing is not None:
        stages = Stages.load(run, STAGES_PATH)
        index = {c.name: i for i, c in enumerate(run.checkpoints())}
        at = next(i for i, c in enumerate(run.checkpoints()) if c.step == crossing)
        print(f"stage boundaries ({stages.smoothing}):")
        for b in stages.boundaries:
            d = index[b["checkpoint"]] - at
            print(f"  {b['curve']:11s} {b['kind']:14s} {b['checkpoint']:12s} step {b['step']:5d}  {d:+d} checkpoints")


if __name__ == "__main__":
    main()
