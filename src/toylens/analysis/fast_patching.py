"""The fast path of activation patching: start after the patch, compute only what it changes.

For the activations that enter the residual stream linearly (`FAST`: resid_pre, resid_mid,
attn_out, z through its head's W_O, mlp_out), a patch is a change of the residual stream at one
stage of one layer. `fast_pass` starts each stacked pass there instead of at the layer's
resid_pre; for a patch at one position, it runs the position-wise work of that stage at that
position only and starts the attention of later blocks at the first patched position, with the
base run's keys and values before it (causal attention: earlier positions are the base run's).
`patching.patch_cells` uses it whenever `handles` says so; every result equals the hooked pass's
up to float rounding (tests/analysis/test_patching.py checks both against a naive loop).
"""

from __future__ import annotations

import torch
from torch import Tensor

from toylens.analysis.metrics import Metric
from toylens.analysis.residual import cached_past, resid_at
from toylens.model import ActivationCache, Transformer
from toylens.model import functional as core

# Where each linearly patchable activation enters the residual stream: (stage, how).
# "pre" l = resid_pre of block l; "mid" l = after block l's attention; "post" l = after its MLP.
# "replace" writes the source there; "add" adds source - base (for z through the head's W_O).
FAST: dict[str, tuple[str, str]] = {
    "resid_pre": ("pre", "replace"),
    "resid_mid": ("mid", "replace"),
    "attn_out": ("mid", "add"),
    "z": ("mid", "add"),
    "mlp_out": ("post", "add"),
}
# A stack of cells split by position gives each pass a later start: positions before a pass's
# first patched position equal the base run (causal attention), so they are never recomputed.
POSITION_GROUPS = 4


def handles(activation: str, index_axes: tuple[str, ...]) -> bool:
    """Whether the fast path handles these cells: one position or all of them, for z one head or
    all of them (never one d_model or d_head component), and a replaced residual at one position."""
    if activation not in FAST or not set(index_axes) <= {"pos", "head"}:
        return False
    if activation != "z" and "head" in index_axes:
        return False
    return FAST[activation][1] == "add" or "pos" in index_axes


def cell_indices(sizes: list[int], index_axes: tuple[str, ...], cells: Tensor) -> dict[str, Tensor]:
    """Each flat cell index split into its index along every axis of `index_axes`."""
    out, rest = {}, cells
    for axis, size in reversed(list(zip(index_axes, sizes))):
        out[axis], rest = rest % size, rest // size
    return out


def stage_values(model: Transformer, base: ActivationCache, src: Tensor, activation: str, layer: int) -> Tensor:
    """What a patch writes at its stage: [batch, pos, k, d_model], k = heads for z, 1 otherwise;
    for "add" the change source - base, for "replace" the new residual."""
    stage, how = FAST[activation]
    if how == "replace":
        return src.expand(base[activation, layer].shape).unsqueeze(2)
    delta = src - base[activation, layer]
    if activation == "z":  # each head's change through its own rows of W_O
        return core.head_results(delta, model.blocks[layer].attn.W_O)
    return delta.unsqueeze(2)


def fast_pass(
    model: Transformer,
    layer: int,
    activation: str,
    base: ActivationCache,
    base_read: Tensor,
    values: Tensor,
    idx: dict[str, Tensor],
    n: int,
    metric: Metric,
    read: Tensor,
) -> Tensor:
    """The metric for a stack of `n` cells, running only what each patch changes. Returns [n].

    `values` are `stage_values` ([batch, pos, k, d_model], k = 1 unless cells pick a head);
    `idx` each cell's position and head (an axis left out means all of them)."""
    stage, how = FAST[activation]
    batch = base_read.shape[0]
    k = idx.get("head", torch.zeros(n, dtype=torch.long, device=values.device))
    base_resid = resid_at(model, base, stage, layer)
    mid = stage == "mid"  # a patch after a block's attention runs the rest of that block (its MLP) first
    first = layer + 1 if stage == "post" else layer  # the first block that runs
    next_layer = layer if stage == "pre" else layer + 1  # the first block whose resid_pre the patch changes
    if "pos" not in idx:  # every position: start at the stage with the whole sequence changed
        resid = (base_resid + values[:, :, k].permute(2, 0, 1, 3)).flatten(0, 1)  # [cells * batch, pos, d_model]
        new = model(residual=resid, start_at_layer=first, after_attention=mid, positions=read)
        return metric(new.view(n, batch, *new.shape[1:])).mean(-1)
    # One position per cell: position-wise work runs at that position only.
    logits = base_read.expand(n, *base_read.shape).clone()  # [cells, batch, read, vocab]
    pos = idx["pos"]
    at = values[:, pos, k].transpose(0, 1)  # [cells, batch, d_model]: the batch stands in for positions
    if how == "add":
        at = base_resid[:, pos].transpose(0, 1) + at
    if next_layer == model.cfg.n_layers:  # only the logits at pos change
        hit = read.unsqueeze(0) == pos.unsqueeze(1)  # [cells, read]
        cell, slot = hit.nonzero(as_tuple=True)
        if len(cell):  # else no cell's position is read: every metric is the base run's
            logits[cell, :, slot] = model(residual=at[cell], start_at_layer=first, after_attention=mid)
        return metric(logits).mean(-1)
    if mid:
        at = model(residual=at, start_at_layer=layer, after_attention=True, stop_at_layer=next_layer)
    # Positions before the first patched one equal the base run: start there, with its keys and values.
    start = int(pos.min())
    resid = (base_resid if stage == "pre" else resid_at(model, base, "pre", next_layer))[:, start:]
    resid = resid.expand(n, *resid.shape).clone()
    resid[torch.arange(n, device=pos.device), :, pos - start] = at
    later = read >= start
    past = cached_past(model, base, next_layer, start, n)
    new = model(residual=resid.flatten(0, 1), start_at_layer=next_layer, past=past, positions=read[later] - start)
    logits[:, :, later] = new.view(n, batch, *new.shape[1:])
    return metric(logits).mean(-1)
