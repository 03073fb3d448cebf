"""devinterp 2.x vs toylens: the refined (weight-restricted) LLC of every head at every checkpoint.

    python3 -m venv .venv-dv2 && .venv-dv2/bin/pip install torch==2.13.0 devinterp==2.0.1
    .venv-dv2/bin/pip install -e .
    toylens train configs/induction-2l.yaml --out runs --set train.epochs=8 --set train.log_checkpoints=24
    .venv-dv2/bin/python bench/llc_restricted.py runs/induction-2l --checkpoint 0,4,8
    .venv-dv2/bin/python bench/llc_restricted.py runs/induction-2l --checkpoint all --device cuda

(devinterp 2.x needs its own environment: it pulls datasets, xarray and zarr, and the other benches
pin devinterp 1.3.2.) Without devinterp (or with --no-devinterp) only toylens's estimates and time
are printed.

Both tools sample the same thing: the run's next-token loss as a function of one head's weights
(row h of blocks.l.attn.W_Q, W_K, W_V, W_O, b_Q, b_K, b_V; devinterp's "l{l}h{h}" restriction,
toylens's `--restrict heads`), every other weight frozen at the checkpoint's, with the same SGLD
rule (Δw = ε/2·(nβ·∇L + γ·(w* − w)) + N(0, ε)), ε, γ, nβ, minibatch size, chains, draws and burn-in,
on the same model object (devinterp 2.x reads a TransformerLens-style model, and toylens's
parameters have TransformerLens's names). The differences are the tools' own:

- devinterp samples one (checkpoint, head) after another, each a `devinterp.slt.llc.llc` call
  (its chains one after another); toylens advances every head x checkpoint x chain together
  (`toylens.llc.estimate_many(..., restrict=...)`).
- devinterp's λ̂ is nβ·(mean loss of its observable − its initial loss), where the observable here
  is one fresh minibatch of the training split per draw (an extra forward per draw); toylens's is
  nβ·(mean minibatch loss of the SGLD steps − initial loss). Both initial losses use the same
  number of minibatches.
- toylens also scores every 10th proposal for its MALA diagnostic (`--mala-every 0`: none).

The run's task must predict every next token (the induction task with `loss_on: all`, or an lm):
its targets must be its tokens shifted by one, which devinterp's per-token loss takes as given.
Prints both estimates with standard errors, whether they agree within 2 combined standard errors,
and the wall-time and CPU-time ratios.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import platform
import time
import warnings

import torch
import torch.nn.functional as F
from common import add_llc_args, agrees, llc_settings, print_times

from toylens.device import resolve_device
from toylens.llc import LLCSettings, estimate_many, restrictions, run_objective
from toylens.llc.driver import center_weights
from toylens.memory import reuse_freed_memory
from toylens.rundir import HELP, RunDir, load, resolve
from toylens.tasks import IGNORE


def sequences(task) -> torch.Tensor:
    """The training split as whole sequences [n, n_ctx + 1] (tokens, then the last target), checking
    that every target is the next token."""
    split = task.splits[task.train_split]
    whole = split.batch(torch.arange(len(split)))
    tokens, targets = whole.tokens, whole.targets
    if (targets == IGNORE).any() or not torch.equal(tokens[:, 1:], targets[:, :-1]):
        raise SystemExit(
            "bench/llc_restricted.py: the run's targets are not its next tokens on every position "
            "(use an induction run with loss_on: all, or an lm run)"
        )
    return torch.cat([tokens, targets[:, -1:]], 1)


def same_masks(ours, theirs: dict, name: str) -> None:
    """devinterp's masks ({param: bool mask, or None for the whole tensor}) sample exactly the
    weights toylens's restriction does."""
    ours_full = {k: m for k, m in ours.masks.items() if bool(m.any())}
    if set(ours_full) != set(theirs):
        raise SystemExit(f"{name}: devinterp samples {sorted(theirs)}, toylens {sorted(ours_full)}")
    for k, m in theirs.items():
        if m is not None and not torch.equal(m.cpu().bool().expand_as(ours_full[k]), ours_full[k]):
            raise SystemExit(f"{name}: devinterp's mask of {k} differs from toylens's")
        if m is None and not bool(ours_full[k].all()):
            raise SystemExit(f"{name}: devinterp samples all of {k}, toylens part of it")


def devinterp_llc(run: RunDir, ckpt, r, s: LLCSettings, nbeta: float, seqs: torch.Tensor, device) -> dict:
    import devinterp.slt.sampler
    from datasets import Dataset
    from devinterp.slt.llc import llc
    from tqdm.auto import trange

    devinterp.slt.sampler.trange = functools.partial(trange, disable=True)  # its per-chain progress bars
    from devinterp.slt.weight_restrictions import create_param_masks

    model = load(run.path, ckpt.name, device=device).model
    # devinterp 2.x takes a model with a TransformerLens-style cfg for a HookedTransformer and moves
    # it with HookedTransformer's `to(device, print_details=False)`; toylens's `to` is torch's.
    model.to = lambda *a, print_details=False, **kw: torch.nn.Module.to(model, *a, **kw)  # type: ignore[method-assign]
    data = Dataset.from_dict({"input_ids": seqs.tolist()}).with_format("torch")

    def per_token_loss(m, ids):
        ids = ids.to(device)
        logits = m(ids[:, :-1])
        return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")

    masks = create_param_masks(model, r.name)
    same_masks(r, masks, r.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = llc(
            model,
            data,
            {"train": (data, 1)},
            lr=s.epsilon,
            n_beta=nbeta,
            localization=s.gamma,
            param_masks=masks,
            loss_fn=per_token_loss,
            num_chains=s.chains,
            num_draws=s.draws,
            num_burnin_steps=s.burnin,
            num_steps_bw_draws=s.thin,
            num_init_loss_batches=s.init_batches,
            batch_size=s.batch_size,
            init_seed=s.seed,
            device=str(device),
        )
    per_chain = out["llc_per_chain"].values.reshape(-1)
    mean = float(per_chain.mean())
    se = float(per_chain.std(ddof=1)) / math.sqrt(len(per_chain)) if len(per_chain) > 1 else float("nan")
    return {"llc": mean, "se": se}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory (an induction run: `toylens train configs/induction-2l.yaml`)")
    ap.add_argument("--checkpoint", default="all", help=HELP)
    ap.add_argument("--restrict", default="heads", help="restrictions both tools name alike: heads, or l0h1,l1h2")
    add_llc_args(ap, epsilon=3e-4, gamma=300.0, batch_size=16, chains=2, draws=100, burnin=50)
    ap.add_argument("--init-batches", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    reuse_freed_memory()  # process-wide: devinterp gets the same malloc behaviour
    with_devinterp = not args.no_devinterp and importlib.util.find_spec("devinterp") is not None
    run = RunDir(args.run)
    s = llc_settings(args, init_batches=args.init_batches)
    ckpts = resolve(run, args.checkpoint)
    loaded = load(run.path, ckpts[0].name, device=device)
    seqs = sequences(loaded.task)
    rs = restrictions(loaded.model, args.restrict.split(","))
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} threads, device {device}, "
        f"torch {torch.__version__}; {len(ckpts)} checkpoint(s) x {len(rs)} restriction(s) of {run.path}; "
        f"eps={s.epsilon:g} gamma={s.gamma:g} m={s.batch_size} chains={s.chains} draws={s.draws} burnin={s.burnin}"
    )
    objective = run_objective(loaded.model, loaded.config, loaded.task, s)
    start, cpu = time.perf_counter(), time.process_time()
    ours = estimate_many(objective, [center_weights(run, c, objective) for c in ckpts], s, restrict=rs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t_ours, c_ours = time.perf_counter() - start, time.process_time() - cpu
    pairs = [(c, r) for c in ckpts for r in rs]  # estimate_many's order: centre by centre
    if not with_devinterp:
        print(f"{'checkpoint':12s} {'head':6s} {'toylens':>16s}")
        for (c, r), a in zip(pairs, ours):
            print(f"{c.name:12s} {r.name:6s} {a.llc:9.3f} ± {a.llc_se:5.3f}")
        reason = "--no-devinterp" if args.no_devinterp else "devinterp is not installed"
        print(f"devinterp: skipped ({reason})")
        print(f"wall time: toylens {t_ours:.1f}s")
        return

    start, cpu = time.perf_counter(), time.process_time()
    theirs = [devinterp_llc(run, c, r, s, e.nbeta, seqs, device) for (c, r), e in zip(pairs, ours)]
    t_theirs, c_theirs = time.perf_counter() - start, time.process_time() - cpu

    agree = 0
    print(f"{'checkpoint':12s} {'head':6s} {'toylens':>16s} {'devinterp':>16s}  agree")
    for (c, r), a, b in zip(pairs, ours, theirs):
        ok = agrees(a, b)
        agree += ok
        print(
            f"{c.name:12s} {r.name:6s} {a.llc:9.3f} ± {a.llc_se:5.3f} {b['llc']:9.3f} ± {b['se']:5.3f}"
            f"  {'yes' if ok else 'NO'}"
        )
    print(f"agree within 2 combined standard errors: {agree}/{len(pairs)}")
    print_times((t_ours, c_ours), (t_theirs, c_theirs))


if __name__ == "__main__":
    main()
