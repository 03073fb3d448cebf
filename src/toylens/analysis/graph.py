"""The residual-stream graph that edge attribution and path patching work on.

The residual stream is a sum of what its writers wrote: the embeddings (token + position), every
head's output (z_h @ W_O[h]) and every MLP's output. Its readers are every head's query, key and
value inputs (separately), every MLP's input and the logits. An edge w -> r exists when w writes
before r reads: an earlier layer, and for an MLP also its own layer's heads. Writers and readers
carry a stage (2l: layer l's attention, 2l + 1: its MLP; the embeddings -1, the logits 2L), and a
writer feeds every reader of a later stage.

    writers(model)   [("embed", -1), ("L0H0", 0), ..., ("MLP0", 1), ...]
    readers(model)   [("L0H0.q", 0), ..., ("L0H0.k", 0), ..., ("MLP0", 1), ..., ("logits", 2L)]
    edge_mask(model) [writer, reader] bool
"""

from __future__ import annotations

import torch
from torch import Tensor

from toylens.model import ActivationCache, Transformer
from toylens.model import functional as core


def writers(model: Transformer) -> list[tuple[str, int]]:
    """(label, stage) of every writer: embed, then per layer its heads L{l}H{h} and MLP{l}. Stage
    2l is layer l's attention, 2l + 1 its MLP; a writer feeds the readers of later stages."""
    cfg, out = model.cfg, [("embed", -1)]
    for layer in range(cfg.n_layers):
        out += [(f"L{layer}H{h}", 2 * layer) for h in range(cfg.n_heads)]
        out += [] if cfg.attn_only else [(f"MLP{layer}", 2 * layer + 1)]
    return out


def readers(model: Transformer) -> list[tuple[str, int]]:
    """(label, stage) of every reader: per layer each head's L{l}H{h}.q, then all .k, all .v, then
    MLP{l}; last the logits."""
    cfg, out = model.cfg, []
    for layer in range(cfg.n_layers):
        out += [(f"L{layer}H{h}.{x}", 2 * layer) for x in "qkv" for h in range(cfg.n_heads)]
        out += [] if cfg.attn_only else [(f"MLP{layer}", 2 * layer + 1)]
    return [*out, ("logits", 2 * cfg.n_layers)]


def edge_mask(model: Transformer) -> Tensor:
    """[writer, reader]: True where the writer writes before the reader reads."""
    read_at = torch.tensor([s for _, s in readers(model)])
    return torch.tensor([s for _, s in writers(model)]).unsqueeze(1) < read_at


def tokens_writer_outputs(model: Transformer, tokens: Tensor) -> Tensor:
    """What every writer wrote [writer, batch, pos, d_model] on `tokens`, in `writers` order."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    if not model.cfg.attn_only:
        names += [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return writer_outputs(model, cache)


def writer_outputs(model: Transformer, cache: ActivationCache) -> Tensor:
    """What every writer wrote [writer, batch, pos, d_model], in `writers` order, from a cache
    holding resid_pre of block 0 (the embeddings), every hook_z and (with MLPs) hook_mlp_out."""
    out = [cache["resid_pre", 0].unsqueeze(0)]
    for layer in range(model.cfg.n_layers):
        heads = core.head_results(cache["z", layer], model.blocks[layer].attn.W_O)  # [batch, pos, head, d_model]
        out.append(heads.permute(2, 0, 1, 3))
        if not model.cfg.attn_only:
            out.append(cache["mlp_out", layer].unsqueeze(0))
    return torch.cat(out)
