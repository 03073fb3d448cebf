"""devinterp vs toylens: the LLC of the same checkpoints with the same hyperparameters.

    .venv/bin/pip install devinterp==1.3.2          # bench only; keeps torch 2.13.0 (needs torch>=2.0.1)
    .venv/bin/python bench/llc.py runs/sort-no-decay                    # the final checkpoint
    .venv/bin/python bench/llc.py runs/sort-no-decay --checkpoint all   # every checkpoint of the run
    python bench/llc.py runs/sort-no-decay --checkpoint all --device cuda   # both tools on the GPU

Without devinterp installed (or with --no-devinterp) only toylens's estimates and times are printed.

devinterp 1.x (`estimate_learning_coeff_with_summary` with its `SGLD`) takes any model and an
`evaluate(model, batch)` loss, so both tools sample the same objective: the run's task loss plus
its L1 activation penalty (use a run without weight decay: devinterp's weight decay is a prior,
not a term of nβ·L). Both use the same ε, γ, nβ, minibatch size, chains, draws and burn-in;
devinterp runs each chain (and each checkpoint) one after another, toylens advances all chains of
all checkpoints together (on a CPU, a chunk of a few chains per worker thread, one per core).
toylens also scores every 10th proposal for the MALA diagnostic, which devinterp is not asked to
do. Prints both estimates with standard errors, whether they agree (within 2 combined standard
errors), and the time ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import time
import warnings

import torch
from common import add_llc_args, agrees, llc_settings, print_times
from torch.utils.data import DataLoader, TensorDataset

from toylens.device import resolve_device
from toylens.llc import LLCSettings, estimate_many, run_objective
from toylens.llc.driver import center_weights
from toylens.memory import reuse_freed_memory
from toylens.rundir import HELP, RunDir, load, resolve
from toylens.tasks import Batch
from toylens.train.regularisers import Regularisers


def devinterp_llc(run: RunDir, ckpt, s: LLCSettings, nbeta: float, init_loss: float, device: torch.device) -> dict:
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    loaded = load(run.path, ckpt.name, device=device)
    model, task, cfg = loaded.model, loaded.task, loaded.config
    model.train()
    penalty = Regularisers.of(model, cfg.train, cfg.model.act_fn).l1 if s.l1 else None  # the L1 toylens samples
    split = task.splits[task.train_split]
    loader = DataLoader(
        TensorDataset(split.tokens, split.targets),
        batch_size=s.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(s.seed),
        drop_last=True,
    )

    def evaluate(m, data):
        tokens, targets = (t.to(device) for t in data)
        if penalty is None or not penalty.fwd_hooks:
            return task.loss(m(tokens), Batch(tokens, targets))
        with m.hooks(penalty.fwd_hooks):
            logits = m(tokens)
        return task.loss(logits, Batch(tokens, targets)) + penalty.take()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=evaluate,
            sampling_method=SGLD,
            optimizer_kwargs=dict(lr=s.epsilon, localization=s.gamma, nbeta=nbeta),
            num_chains=s.chains,
            num_draws=s.draws,
            num_burnin_steps=s.burnin,
            num_steps_bw_draws=s.thin,
            init_loss=init_loss,
            device=str(device),
            verbose=False,
            seed=s.seed,
        )
    chains = out["llc/means"] if "llc/means" in out else None
    std = float(out["llc/std"])
    return {"llc": float(out["llc/mean"]), "se": std / math.sqrt(s.chains), "chains": chains}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory (train one with `toylens train configs/sort-no-decay.yaml`)")
    ap.add_argument("--checkpoint", default="final", help=HELP)
    add_llc_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    reuse_freed_memory()  # process-wide: devinterp gets the same malloc behaviour
    with_devinterp = not args.no_devinterp and importlib.util.find_spec("devinterp") is not None
    run = RunDir(args.run)
    s = llc_settings(args)
    ckpts = resolve(run, args.checkpoint)
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} threads, device {device}, "
        f"torch {torch.__version__}; "
        f"{len(ckpts)} checkpoint(s) of {run.path}; eps={s.epsilon:g} gamma={s.gamma:g} m={s.batch_size} "
        f"chains={s.chains} draws={s.draws} burnin={s.burnin}"
    )

    loaded = load(run.path, ckpts[0].name, device=device)
    if loaded.config.train.weight_decay:
        print("# note: the run has weight decay; both tools sample without it here")
    objective = run_objective(loaded.model, loaded.config, loaded.task, s)
    start, cpu = time.perf_counter(), time.process_time()
    ours = estimate_many(objective, [center_weights(run, c, objective) for c in ckpts], s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t_ours, c_ours = time.perf_counter() - start, time.process_time() - cpu
    if not with_devinterp:
        print(f"{'checkpoint':12s} {'toylens':>16s}")
        for c, a in zip(ckpts, ours):
            print(f"{c.name:12s} {a.llc:9.3f} ± {a.llc_se:5.3f}")
        reason = "--no-devinterp" if args.no_devinterp else "devinterp is not installed"
        print(f"devinterp: skipped ({reason})")
        print(f"wall time: toylens {t_ours:.1f}s")
        return

    start, cpu = time.perf_counter(), time.process_time()
    theirs = [devinterp_llc(run, c, s, e.nbeta, e.init_loss, device) for c, e in zip(ckpts, ours)]
    t_theirs, c_theirs = time.perf_counter() - start, time.process_time() - cpu

    agree = 0
    print(f"{'checkpoint':12s} {'toylens':>16s} {'devinterp':>16s}  agree")
    for c, a, b in zip(ckpts, ours, theirs):
        ok = agrees(a, b)
        agree += ok
        print(f"{c.name:12s} {a.llc:9.3f} ± {a.llc_se:5.3f} {b['llc']:9.3f} ± {b['se']:5.3f}  {'yes' if ok else 'NO'}")
    print(f"agree within 2 combined standard errors: {agree}/{len(ckpts)}")
    print_times((t_ours, c_ours), (t_theirs, c_theirs))


if __name__ == "__main__":
    main()
