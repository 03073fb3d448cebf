"""Exact direct path patching: the effect of one sender on one receiver along the direct path alone.

Senders are the writers of the residual stream (the embeddings, every head's output z_h @ W_O[h],
every MLP's output); receivers are its readers (every head's query, key and value inputs
separately, every MLP's input, and the logits: the final residual stream, before ln_final) —
the graph of `edge_attribution`, in the same [writer, reader] layout, so the exact effects sit
beside their EAP estimates. For a sender s and a later receiver r (Wang et al. 2022; TransformerLens's
`get_act_patch_direct_path`, which covers head -> head q/k/v):

    the corrupted run, with r's own input replaced by  in_r(corrupted) + out_s(clean) - out_s(corrupted)

and nothing else touched: every other reader still sees the sender's corrupted output, the
receiver's changed output then flows on through everything after it (recomputed), and the metric
is read at the output. This is denoising, as `Patcher`: clean activations into the corrupted run,
`normalized` = (metric - corrupted) / (clean - corrupted). Where no path exists (the receiver
reads before the sender writes: an earlier layer, or a head of the sender's own layer) the grid
holds NaN (TransformerLens writes 0.0 placeholders there).

The sender's change is added at every position. Batched like the exact patcher: every
(sender, receiver) pair of one receiving layer is one copy of the corrupted batch in a stacked
pass that starts at that layer from the corrupted run's cached residual stream
(`model(residual=..., start_at_layer=l)`), each copy's one changed head input projected once; an MLP
receiver's stack starts after its block's attention, and the logits need only the unembedding.
Every pass also starts at the first position where some sender's output changes (before it the
run is the corrupted one, attention being causal), with the corrupted keys and values there.

    grid = path_patching(Patcher(model, clean_tokens, corrupted_tokens, metric))
    grid.value("L0H1", "L1H2.k")        # normalized effect of the path L0H1 -> L1H2's keys
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from toylens.analysis import graph
from toylens.analysis.metrics import Metric
from toylens.analysis.patching import Patcher, read_positions, rows_per_pass
from toylens.analysis.residual import cached_past, resid_at
from toylens.model import ActivationCache, HookPoint, Transformer
from toylens.model import functional as core
from toylens.model.components import LayerNorm
from toylens.rundir.results import Result


@dataclass
class PathPatchGrid(Result):
    """The metric with each sender -> receiver direct path patched clean -> corrupted run:
    `values` and `normalized` [sender, receiver], NaN where no path exists."""

    values: Tensor
    normalized: Tensor
    senders: list[str]
    receivers: list[str]
    clean: float
    corrupted: float
    metric: str
    metric_description: str
    corruption: str = ""

    axes = {"values": ("sender", "receiver"), "normalized": ("sender", "receiver")}

    def value(self, sender: str, receiver: str) -> float:
        """The normalized effect of one path, e.g. value("L0H1", "L1H2.k")."""
        return float(self.normalized[self.senders.index(sender), self.receivers.index(receiver)])

    def top_paths(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The k paths with the largest |normalized| effect, largest first."""
        flat = self.normalized.nan_to_num(0).abs().flatten()
        n = len(self.receivers)
        return [
            (self.senders[i // n], self.receivers[i % n], float(self.normalized.flatten()[i]))
            for i in flat.argsort(descending=True)[:k].tolist()
        ]


@torch.no_grad()
def path_patching(patcher: Patcher) -> PathPatchGrid:
    """Every direct path sender -> receiver of the patcher's model, patched exactly (see the
    module docstring); the patcher gives the clean/corrupted pair, the metric and both caches."""
    model, cache = patcher.model, patcher.corrupted_cache
    cfg = model.cfg
    read = read_positions(patcher.metric)
    metric = patcher.metric.at(read)
    # [sender, batch, pos, d_model]
    delta = graph.writer_outputs(model, patcher.clean_cache) - graph.writer_outputs(model, cache)
    changed = delta.ne(0).any(-1).flatten(0, 1).any(0).nonzero()  # positions where a sender's output changes
    mask = graph.edge_mask(model).to(delta.device)
    values = torch.full(mask.shape, float("nan"), dtype=delta.dtype, device=delta.device)
    values[mask] = patcher.corrupted
    readers = [name for name, _ in graph.readers(model)]
    batch, pos = delta.shape[1:3]
    per_pass = max(1, (patcher.max_rows or rows_per_pass(model, pos)) // batch)
    if len(read) and len(changed):  # else no path changes a logit the metric reads
        base = _Base(cache, patcher.corrupted_logits[:, read], int(changed[0]))
        stack = _Stack(values, mask, delta, per_pass)
        for layer in range(cfg.n_layers):
            heads = [readers.index(f"L{layer}H{h}.{x}") for x in "qkv" for h in range(cfg.n_heads)]
            stack.fill(heads, partial(_head_pass, model, base, layer, metric, read))
            if not cfg.attn_only:
                mlp = [readers.index(f"MLP{layer}")]
                stack.fill(mlp, partial(_mlp_pass, model, base, layer, metric, read))
        final = resid_at(model, cache, "post", cfg.n_layers - 1)
        stack.fill([readers.index("logits")], partial(_logits_pass, model, final, metric, read))
    return PathPatchGrid(
        values=values.cpu(),
        normalized=patcher.normalize(values - patcher.corrupted).cpu(),
        senders=[w for w, _ in graph.writers(model)],
        receivers=readers,
        clean=patcher.clean,
        corrupted=patcher.corrupted,
        metric=patcher.metric.name,
        metric_description=patcher.metric.description,
        corruption=patcher.description,
    )


Run = Callable[[Tensor, Tensor], Tensor]


@dataclass
class _Stack:
    """Fills `values` [sender, receiver] in stacked passes of at most `per_pass` pairs."""

    values: Tensor
    mask: Tensor
    delta: Tensor
    per_pass: int

    def fill(self, columns: list[int], run: Run) -> None:
        """values[s, r] for every path into the receivers `columns`: `run(d, which)` takes the
        senders' changes d [n, batch, pos, d_model] and their receivers (indices into `columns`)
        [n], and returns the metric of each pair [n]."""
        pairs = self.mask[:, columns].nonzero()  # [(sender, index into columns)]
        cols = torch.tensor(columns, device=self.values.device)
        for chunk in pairs.split(self.per_pass) if len(pairs) else ():
            senders, which = chunk[:, 0], chunk[:, 1]
            self.values[senders, cols[which]] = run(self.delta[senders], which)


def _head_pass(
    model: Transformer, base: _Base, layer: int, metric: Metric, read: Tensor, delta: Tensor, which: Tensor
) -> Tensor:
    """n (sender, head input) pairs of one layer: copy c of the corrupted batch adds delta[c] to
    the input `which[c]` (= kind * n_heads + head, kinds q, k, v) of one head alone.

    The same as adding it to that head's split input (`Transformer.split_qkv_input`), without
    running every head's q, k and v from a copy of its own: the block runs unsplit, and at its
    hook_q / hook_k / hook_v each copy's one changed head is replaced by its projection of
    ln1(resid_pre + delta[c])."""
    n, batch = delta.shape[:2]
    n_heads = model.cfg.n_heads
    kind, head = which // n_heads, which % n_heads
    block = model.blocks[layer]
    attn = block.attn
    resid = resid_at(model, base.cache, "pre", layer)[:, base.start :]
    inputs = resid + delta[:, :, base.start :]  # [n, batch, pos, d_model]
    if isinstance(block.ln1, LayerNorm):
        inputs = core.layer_norm(inputs, block.ln1.w, block.ln1.b, eps=block.ln1.eps)
    W = torch.stack([attn.W_Q, attn.W_K, attn.W_V])[kind, head]  # [n, d_model, d_head]
    b = torch.stack([attn.b_Q, attn.b_K, attn.b_V])[kind, head]  # [n, d_head]
    new = core.linear(inputs, W, b)  # [n, batch, pos, d_head]: copy c through its own head's weights

    def replace(x: Tensor, hook: HookPoint) -> Tensor:  # x [n * batch, pos, n_heads, d_head]
        mine = (kind == "qkv".index(hook.name[-1])).nonzero().squeeze(-1)  # the copies changing this kind
        x = x.clone()
        x.view(n, batch, *x.shape[1:])[mine, :, :, head[mine]] = new[mine]
        return x

    with model.hooks([([f"blocks.{layer}.attn.hook_{x}" for x in "qkv"], replace)]):
        return base.run(model, "pre", layer, n, metric, read)


def _mlp_pass(
    model: Transformer, base: _Base, layer: int, metric: Metric, read: Tensor, delta: Tensor, _: Tensor
) -> Tensor:
    """n senders into one layer's MLP: copy c adds delta[c] to hook_mlp_in (the MLP's input
    alone), starting from the corrupted resid_mid, so only the MLP half of the block runs."""
    change = delta[:, :, base.start :].flatten(0, 1)

    def add(x: Tensor, hook: HookPoint) -> Tensor:
        return x + change

    with model.hooks([(f"blocks.{layer}.hook_mlp_in", add)]):
        return base.run(model, "mid", layer, len(delta), metric, read)


@dataclass
class _Base:
    """The corrupted run, from which each stacked pass starts: its cache and logits at the read
    positions. Every sender's change is zero before position `start` (the first one where clean
    and corrupted differ), so, attention being causal, a pass starts there, with the corrupted
    run's keys and values of the positions before."""

    cache: ActivationCache
    logits: Tensor  # [batch, read, d_vocab_out]
    start: int

    def run(self, model: Transformer, stage: str, layer: int, n: int, metric: Metric, read: Tensor) -> Tensor:
        """The metric [n] of n copies of the corrupted batch run from `stage` ("pre": resid_pre,
        "mid": after the attention) of `layer`, through whatever hooks are on."""
        later = read >= self.start
        resid = resid_at(model, self.cache, stage, layer)[:, self.start :].repeat(n, 1, 1)
        past = cached_past(model, self.cache, layer, self.start, n)
        new = model(
            residual=resid,
            start_at_layer=layer,
            after_attention=stage == "mid",
            past=past,
            positions=read[later] - self.start,
        )
        logits = self.logits.expand(n, *self.logits.shape).clone()  # [n, batch, read, vocab]
        logits[:, :, later] = new.view(n, -1, *new.shape[1:])
        return metric(logits).mean(-1)


def _logits_pass(model: Transformer, final: Tensor, metric: Metric, read: Tensor, delta: Tensor, _: Tensor) -> Tensor:
    """n senders into the logits: the corrupted final residual stream plus delta[c], unembedded
    (through ln_final) at the positions the metric reads."""
    n, batch = delta.shape[:2]
    resid = (final[:, read] + delta[:, :, read]).flatten(0, 1)
    logits = model(residual=resid, start_at_layer=model.cfg.n_layers)
    return metric(logits.view(n, batch, *logits.shape[1:])).mean(-1)
