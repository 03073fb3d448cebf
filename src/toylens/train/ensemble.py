"""Vectorised ensembles: runs that share an architecture and data, trained as one computation.

    from toylens.train.ensemble import train_ensemble
    outcomes = train_ensemble([cfg_a, cfg_b, cfg_c], out="runs")   # one MemberOutcome per config

Members may differ in `seed`, `train.lr`, `train.weight_decay` and `train.l1.coef` (and `name`);
everything else must be equal (`ensemble_key`). Their parameters are stacked on a leading member
dimension (`torch.func.stack_module_state`), one `vmap(functional_call)` runs every member's
forward pass at once, one backward pass gives every member's gradients, and `StackedAdamW`
applies AdamW with each member's learning rate and weight decay.

What "member k matches its solo run" means: member k sees exactly the batches its solo run sees
(its own data order from its own seed, gathered per member inside the batched step), with the
same learning-rate schedule, L1 penalty, per-member gradient clipping and AdamW update. The only
differences are float rounding: batched kernels sum in another order, and attention takes the
explicit path (vmap has no batching rule for CPU SDPA). tests/train/test_ensemble.py checks the final
weights of members against solo runs.

Every member gets an ordinary run directory, written by the same code as a solo run (a `Trainer`
per member does its evaluation, checkpoints, summary and callbacks), so `toylens.load`, analyses
and `--resume` work on members, alone or again as an ensemble. A member whose loss becomes NaN
stops with its last good checkpoint kept, as a solo run would; the others go on.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from toylens.config import L1Config, RunConfig, load_config
from toylens.device import resolve_device
from toylens.errors import ToylensError, TrainingDiverged
from toylens.memory import reuse_freed_memory
from toylens.model import Transformer
from toylens.rundir import run_lock, step_name
from toylens.tasks import Batch, build_task
from toylens.train.batches import device_batches
from toylens.train.callbacks import TrainCallback
from toylens.train.compiled import check_compiler, compile_forward
from toylens.train.determinism import deterministic_algorithms
from toylens.train.loop import (
    Trainer,
    TrainResult,
    epoch_order,
    finished_result,
    prepare_run_dir,
    restore_metrics,
    start_or_resume,
)
from toylens.train.optim import build_optimizer, lr_at, set_lr
from toylens.train.precision import forward_autocast, loss_logits
from toylens.train.regularisers import L1Penalty, Regularisers
from toylens.train.state import save_checkpoint

log = logging.getLogger("toylens")

# Fields members may differ in; an ensemble shares every other field.
VARYING = ("name", "seed", "train.lr", "train.weight_decay", "train.l1.coef")


@dataclass
class MemberOutcome:
    """What became of one member: its result, or a one-line error."""

    name: str
    result: TrainResult | None
    error: str | None = None


def ensemble_key(cfg: RunConfig) -> str:
    """Configs with equal keys can train as one ensemble (they differ only in VARYING fields)."""
    raw = cfg.model_dump(mode="json")
    for dotted in VARYING:
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node.pop(leaf)
    return json.dumps(raw, sort_keys=True)


def train_ensemble(
    configs: Sequence[RunConfig | str | Path],
    out: str | Path = "runs",
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    callbacks: Callable[[RunConfig], Sequence[TrainCallback]] | None = None,
) -> list[MemberOutcome]:
    """Train every config into `out/<name>` as one vectorised ensemble; see the module docstring.

    `callbacks(cfg)` gives each member its own callbacks. Finished members are skipped; with
    `resume`, members continue from their last epoch checkpoint (all must be at the same one).
    """
    cfgs = [c if isinstance(c, RunConfig) else load_config(c) for c in configs]
    _check_compatible(cfgs)
    task = build_task(cfgs[0].task)
    cfgs = [c.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx) for c in cfgs]
    dev = resolve_device(device)
    check_compiler(cfgs[0].train.compile, dev)
    if dev.type == "cpu":
        reuse_freed_memory()  # every step rebuilds the same large tensors; see toylens.memory
    outcomes: dict[str, MemberOutcome] = {}
    members: list[Trainer] = []
    with contextlib.ExitStack() as locks, deterministic_algorithms(cfgs[0].train.deterministic, dev):
        for cfg in cfgs:
            locks.enter_context(run_lock(Path(out) / cfg.name, "train (ensemble)", create=True))
            run = prepare_run_dir(Path(out) / cfg.name, cfg, resume, overwrite)
            run.write_task_files(task.saved_files())
            if run.has("summary.json"):
                if resume:
                    restore_metrics(run)
                outcomes[cfg.name] = MemberOutcome(cfg.name, finished_result(run))
                continue
            model = Transformer(cfg.model, seed=cfg.seed).to(dev)
            opt = build_optimizer(model, cfg.train)
            state = start_or_resume(run, cfg, task, model, opt)
            members.append(
                Trainer(
                    cfg, task, model, opt, run, state, progress=False, callbacks=callbacks(cfg) if callbacks else ()
                )
            )
        if members:
            steps = sorted({m.state.step for m in members})
            if len(steps) > 1:
                raise ToylensError(
                    f"ensemble members resume from different steps ({steps}); train them in separate ensembles or alone"
                )
            outcomes.update(EnsembleTrainer(members, progress).fit())
    return [outcomes[c.name] for c in cfgs]


def _check_compatible(cfgs: list[RunConfig]) -> None:
    names = [c.name for c in cfgs]
    if not cfgs or len(set(names)) != len(names):
        raise ToylensError(f"ensemble: members need distinct names (got {names})")
    first = ensemble_key(cfgs[0])
    for cfg in cfgs[1:]:
        if ensemble_key(cfg) != first:
            a, b = json.loads(first), json.loads(ensemble_key(cfg))
            diff = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
            raise ToylensError(
                f"ensemble: {cfg.name} differs from {cfgs[0].name} in {', '.join(diff)}; "
                f"members may differ only in {', '.join(VARYING[1:])}"
            )


class EnsembleTrainer:
    """Trains member `Trainer`s in lockstep with stacked parameters; each member's own Trainer
    evaluates, checkpoints and summarises it."""

    def __init__(self, members: list[Trainer], progress: bool):
        self.members = members
        lead = members[0]
        self.task, self.data, self.device = lead.task, lead.data, lead.device
        self.batch_size, self.total_steps = lead.cfg.train.batch_size, lead.total_steps
        self.grad_clip = lead.cfg.train.grad_clip
        params, self.buffers = stack_module_state([m.model for m in members])
        self.params: dict[str, Tensor] = params
        self.base = copy.deepcopy(lead.model).to("meta")  # a stateless template for functional_call
        self.base.explicit_attention = True
        coefs = [m.cfg.train.l1.coef for m in members]
        self.penalty = L1Penalty(
            L1Config(hooks=lead.cfg.train.l1.hooks, coef=1.0 if any(coefs) else 0.0), lead.cfg.model.act_fn
        )
        self.l1_coef = torch.tensor(coefs, device=self.device)
        # Members share the schedule's shape (warmup, cosine, floor), so lr_k(step) = lr_k * shape(step):
        # one Python float per step, and no host-to-device copy that would stall a GPU.
        self.base_lr = torch.tensor([m.cfg.train.lr for m in members], dtype=torch.float64, device=self.device)
        self.alive = torch.ones(len(members), dtype=torch.bool, device=self.device)
        self.epoch_steps = lead.steps_per_epoch  # steps in the current epoch (fewer in one cut by max_steps)
        self.errors: dict[str, str] = {}
        self.member_losses = compile_forward(vmap(self._member_loss), self._compiles(), self.device)
        self.opt = StackedAdamW(
            self.params, self._decay_rates(), lead.cfg.train.betas, foreach=self.device.type == "cuda"
        )
        for k, m in enumerate(members):
            self.opt.load_member(k, m.opt, m.model)
        self.bar = tqdm(
            total=self.total_steps,
            initial=lead.state.step,
            unit="step",
            disable=not progress,
            desc=f"ensemble of {len(members)}",
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def _compiles(self) -> bool:
        """Whether every member's forward and loss run as one compiled graph (train.compile). Not
        with an L1 penalty: its hooks record into a Python list, a side effect torch.compile cannot
        trace inside vmap, so those ensembles train uncompiled (the same results, eager speed)."""
        lead = self.members[0].cfg.train
        if lead.compile and self.penalty.fwd_hooks:
            log.warning("train.compile: an ensemble with an L1 penalty (train.l1.coef > 0) trains uncompiled")
            return False
        return lead.compile

    def _decay_rates(self) -> dict[str, Tensor]:
        lead = self.members[0]  # members share train.weight_decay_on, so the decayed parameters
        decayed = set(Regularisers.of(lead.model, lead.cfg.train).decayed)
        wd = torch.tensor([m.cfg.train.weight_decay for m in self.members], dtype=torch.float64, device=self.device)
        return {name: wd if name in decayed else torch.zeros_like(wd) for name in self.params}

    def fit(self) -> dict[str, MemberOutcome]:
        lead = self.members[0]
        start = time.perf_counter() - lead.state.history.get("wall_s", 0.0)
        for m in self.members:
            m.notify("on_train_start", m.cfg, m.run, m.state)
        try:
            with self.bar:
                while not lead.done() and bool(self.alive.any()):
                    sums = self.train_epoch()
                    self.end_epoch(sums, time.perf_counter() - start)
            wall = time.perf_counter() - start
            return {m.cfg.name: self._finish(k, m, wall) for k, m in enumerate(self.members)}
        except BaseException as e:
            for k, m in enumerate(self.members):
                if self.alive[k]:
                    m.notify("on_train_error", e)
            raise

    def _finish(self, k: int, member: Trainer, wall_s: float) -> MemberOutcome:
        if not self.alive[k]:
            return MemberOutcome(member.cfg.name, None, self.errors[member.cfg.name])
        return MemberOutcome(member.cfg.name, member.finish(wall_s))

    def train_epoch(self) -> Float[Tensor, "member 2"]:
        """One epoch of every member (up to `train.max_steps`), each in its own data order; summed
        [task loss, L1] per member over the epoch's `epoch_steps` steps."""
        epoch = self.members[0].state.epoch
        orders = torch.stack([epoch_order(m.cfg.seed, epoch, len(self.data)) for m in self.members])
        sums = torch.zeros(len(self.members), 2, device=self.device)
        tokens, t0 = 0, time.perf_counter()
        self.epoch_steps = self.members[0].epoch_steps()
        indices = orders.split(self.batch_size, dim=1)[: self.epoch_steps]
        batches = device_batches(indices, lambda idx: self.data.batch(idx.flatten()), self.device)
        for i, (idx, data) in enumerate(zip(indices, batches)):
            sums += self.step(idx, data)
            tokens += idx.numel() * self.members[0].cfg.model.n_ctx
            step = self.members[0].state.step
            if step in self.members[0].log_steps:
                self._check_finite(sums)
                self._save_step_checkpoints(step_name(step))
            if i % 20 == 0:
                self._check_finite(sums)
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                self.bar.set_postfix(epoch=epoch + 1, alive=int(self.alive.sum()), tok_s=f"{rate:.3g}", refresh=False)
        self._check_finite(sums)
        return sums

    def step(self, idx: Int[Tensor, "member batch"], data: Batch) -> Float[Tensor, "member 2"]:
        """One AdamW step of every member on its own batch (`data`: the examples `idx` names, member
        by member, on the device); returns [task loss, L1 penalty] per member."""
        n_members, batch = idx.shape
        tokens = data.tokens.view(n_members, batch, -1)
        targets = data.targets.view(n_members, batch, -1)
        lead = self.members[0].cfg.train
        lr = self.base_lr * (lr_at(self.members[0].state.step, self.total_steps, lead) / lead.lr)
        with self.base.hooks(self.penalty.fwd_hooks):  # outside the vmapped (and compiled) function
            loss, l1_raw = self.member_losses(self.params, self.buffers, tokens, targets)
        l1 = l1_raw * self.l1_coef
        # Members are independent, so the gradient of the sum is each member's own gradient.
        total = torch.where(self.alive, loss + l1, torch.zeros_like(loss)).sum()
        for p in self.params.values():
            p.grad = None
        total.backward()
        self._clip_and_mask_grads()
        self.opt.step(torch.where(self.alive, lr, torch.zeros_like(lr)))
        for m in self.members:
            m.state.step += 1
        self.bar.update()
        return torch.stack([loss.detach(), l1.detach()], dim=1)

    def _member_loss(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], tokens: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One member's task loss and unscaled L1 penalty (run under vmap, with the penalty's hooks on)."""
        with forward_autocast(self.device, self.members[0].cfg.train.precision):
            logits = functional_call(self.base, (params, buffers), (tokens,))
        logits = loss_logits(logits, self.members[0].cfg.train.precision)
        return self.task.loss(logits, Batch(tokens, targets)), self.penalty.take().to(logits.device)

    @torch.no_grad()
    def _clip_and_mask_grads(self) -> None:
        """Per-member global-norm clipping as `clip_grad_norm_`; stopped members get no update."""
        grads = [_grad(p) for p in self.params.values()]
        for g in grads:  # masked_fill (not boolean indexing): no device synchronisation
            g.masked_fill_(~self.alive.view(-1, *[1] * (g.dim() - 1)), 0.0)
        if self.grad_clip is None:
            return
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], dim=1).norm(dim=1)
        scale = (self.grad_clip / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))

    def end_epoch(self, sums: Float[Tensor, "member 2"], wall_s: float) -> None:
        """Each live member's Trainer evaluates and checkpoints it; the others just count the epoch."""
        for k, m in enumerate(self.members):
            if not self.alive[k]:
                m.state.epoch += 1
                continue
            self._sync_member(k, optimizer=True)
            m.end_epoch(m.epoch_metrics(sums[k], self.epoch_steps), wall_s)

    def _save_step_checkpoints(self, name: str) -> None:
        for k, m in enumerate(self.members):
            if self.alive[k]:
                self._sync_member(k, optimizer=False)
                save_checkpoint(m.run, name, m.model, m.cfg, m.state)

    @torch.no_grad()
    def _sync_member(self, k: int, optimizer: bool) -> None:
        """Copy member k's slice of the stacked weights (and optimizer state) into its own model."""
        m = self.members[k]
        for name, p in m.model.named_parameters():
            p.copy_(self.params[name][k])
        if optimizer:
            self.opt.export_member(k, m.opt, m.model)
            set_lr(m.opt, lr_at(max(m.state.step - 1, 0), self.total_steps, m.cfg.train))

    def _check_finite(self, sums: Tensor) -> None:
        finite = torch.isfinite(sums).all(dim=1) | ~self.alive  # one device sync for all members
        if bool(finite.all()):
            return
        for k, m in enumerate(self.members):
            if bool(finite[k]):
                continue
            try:
                m.check_finite(sums[k])
            except TrainingDiverged as e:
                self.alive[k] = False
                self.errors[m.cfg.name] = str(e)
                log.warning("%s", e)
                m.notify("on_train_error", e)


class StackedAdamW:
    """AdamW (decoupled weight decay, as `torch.optim.AdamW`) over parameters stacked on a
    leading member dimension, with a learning rate and weight decay per member.

    `foreach=True` (the ensemble's choice on CUDA) runs each elementwise stage as one
    multi-tensor kernel over every parameter instead of one kernel per parameter; it does the
    same operations in the same order, so it is bit-identical to the loop on the CPU and equal up to
    float rounding on CUDA (tests/train/test_optim_kernels.py). The CPU keeps the loop: it has no
    multi-tensor kernels to gain from.
    """

    def __init__(
        self,
        params: dict[str, Tensor],
        weight_decay: dict[str, Tensor],
        betas: tuple[float, float],
        eps: float = 1e-8,
        foreach: bool = False,
    ):
        self.params, self.weight_decay, self.betas, self.eps = params, weight_decay, betas, eps
        self.foreach = foreach
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, lr: Float[Tensor, " member"]) -> None:
        self.steps += 1
        (self._step_foreach if self.foreach else self._step_loop)(lr)

    def _bias_corrections(self) -> tuple[float, float]:
        beta1, beta2 = self.betas
        return 1 - beta1**self.steps, (1 - beta2**self.steps) ** 0.5

    def _step_loop(self, lr: Float[Tensor, " member"]) -> None:
        beta1, beta2 = self.betas
        bias1, bias2_sqrt = self._bias_corrections()
        for name, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            p.mul_((1 - lr * self.weight_decay[name]).to(p.dtype).view(shape))
            m, v, grad = self.exp_avg[name], self.exp_avg_sq[name], _grad(p)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            p.sub_((lr / bias1).to(p.dtype).view(shape) * m / denom)

    def _step_foreach(self, lr: Float[Tensor, " member"]) -> None:
        """`_step_loop`, stage by stage over all parameters; only the per-member factors (decay,
        step size) broadcast and so run per parameter."""
        beta1, beta2 = self.betas
        bias1, bias2_sqrt = self._bias_corrections()
        names = list(self.params)
        params = [self.params[n] for n in names]
        grads = [_grad(p) for p in params]
        m, v = [self.exp_avg[n] for n in names], [self.exp_avg_sq[n] for n in names]
        shapes = [(-1,) + (1,) * (p.dim() - 1) for p in params]
        for n, p, shape in zip(names, params, shapes):
            p.mul_((1 - lr * self.weight_decay[n]).to(p.dtype).view(shape))
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, self.eps)
        update = [(lr / bias1).to(p.dtype).view(shape) * m_p for p, shape, m_p in zip(params, shapes, m)]
        torch._foreach_div_(update, denom)
        torch._foreach_sub_(params, update)

    @torch.no_grad()
    def load_member(self, k: int, opt: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        """Take member k's moments and step count from its (possibly restored) torch AdamW."""
        for name, p in model.named_parameters():
            state = opt.state.get(p)
            if state:
                self.exp_avg[name][k] = state["exp_avg"]
                self.exp_avg_sq[name][k] = state["exp_avg_sq"]
                self.steps = int(state["step"])

    @torch.no_grad()
    def export_member(self, k: int, opt: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        """Write member k's moments into its torch AdamW, so its checkpoint is a solo run's."""
        for name, p in model.named_parameters():
            opt.state[p] = {
                "step": torch.tensor(float(self.steps)),
                "exp_avg": self.exp_avg[name][k].clone(),
                "exp_avg_sq": self.exp_avg_sq[name][k].clone(),
            }


def _grad(p: Tensor) -> Tensor:
    """p's gradient after backward: every stacked weight has one, since each member's loss reads all its weights."""
    assert p.grad is not None, "a stacked parameter has no gradient after backward"
    return p.grad
