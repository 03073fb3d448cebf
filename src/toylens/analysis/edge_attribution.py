"""Edge attribution patching (EAP, EAP-IG): every edge of the residual-stream graph from one backward.

The residual stream is a sum of what its writers wrote: the embeddings (token + position), every
head's output (z_h @ W_O[h]) and every MLP's output. Its readers are every head's query, key and
value inputs (separately, through the model's split inputs: `Transformer.split_qkv_input`), every
MLP's input and the logits. An edge w -> r exists when w writes before r reads (an earlier layer;
for an MLP also its own layer's heads). Its EAP score is the first-order estimate of patching the
edge alone from the clean run into the corrupted one (denoising, as `attribution_patching`):

    score(w -> r) = sum over batch and positions of (out_w(clean) - out_w(corrupted)) . d metric / d in_r

with d metric / d in_r the gradient of the batch-mean metric at reader r's own input (which no
other reader shares), at the corrupted run. A writer's edges add up to its node AtP estimate
(every reader after it reads the stream it wrote to). EAP-IG (Hanna et al. 2024) averages the
reader gradients over k points on the straight line from the corrupted to the clean embeddings,
alpha = 0, 1/k, ..., (k-1)/k (a left Riemann sum of the integrated gradient, so k = 1 is EAP),
with the k points stacked along the batch of one forward and one backward pass.

    eap = edge_attribution(model, clean_tokens, corrupted_tokens, metric, ig_steps=5)
    eap.top_edges(10)                       # [(writer, reader, score)], largest |score| first
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from toylens.analysis.metrics import Accuracy, Metric
from toylens.analysis.results import Result
from toylens.errors import ToylensError
from toylens.model import HookPoint, Transformer
from toylens.model import functional as core


@dataclass
class EdgeScores(Result):
    """Scores [writer, reader] of every edge (NaN where the writer comes after the reader)."""

    scores: Tensor
    normalized: Tensor
    writers: list[str]
    readers: list[str]
    clean: float
    corrupted: float
    metric: str
    metric_description: str
    ig_steps: int
    corruption: str = ""

    axes = {"scores": ("writer", "reader"), "normalized": ("writer", "reader")}

    def top_edges(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The k edges with the largest |score|, largest first."""
        flat = self.scores.nan_to_num(0).abs().flatten()
        order = flat.argsort(descending=True)[:k]
        n = len(self.readers)
        return [(self.writers[i // n], self.readers[i % n], float(self.scores.flatten()[i])) for i in order.tolist()]


def _writers(model: Transformer) -> list[tuple[str, int]]:
    """(label, stage) of every writer: embed, then per layer its heads L{l}H{h} and MLP{l}. Stage
    2l is layer l's attention, 2l + 1 its MLP; a writer feeds the readers of later stages."""
    cfg, out = model.cfg, [("embed", -1)]
    for layer in range(cfg.n_layers):
        out += [(f"L{layer}H{h}", 2 * layer) for h in range(cfg.n_heads)]
        out += [] if cfg.attn_only else [(f"MLP{layer}", 2 * layer + 1)]
    return out


def _readers(model: Transformer) -> list[tuple[str, int]]:
    """(label, stage) of every reader: per layer each head's L{l}H{h}.q, then all .k, all .v, then
    MLP{l}; last the logits."""
    cfg, out = model.cfg, []
    for layer in range(cfg.n_layers):
        out += [(f"L{layer}H{h}.{x}", 2 * layer) for x in "qkv" for h in range(cfg.n_heads)]
        out += [] if cfg.attn_only else [(f"MLP{layer}", 2 * layer + 1)]
    return [*out, ("logits", 2 * cfg.n_layers)]


def edge_mask(model: Transformer) -> Tensor:
    """[writer, reader]: True where the writer writes before the reader reads."""
    readers = torch.tensor([s for _, s in _readers(model)])
    return torch.tensor([s for _, s in _writers(model)]).unsqueeze(1) < readers


def _writer_outputs(model: Transformer, tokens: Tensor) -> Tensor:
    """What every writer wrote [writer, batch, pos, d_model], in `_writers` order."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    if not model.cfg.attn_only:
        names += [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    out = [cache["resid_pre", 0].unsqueeze(0)]
    for layer in range(model.cfg.n_layers):
        heads = core.head_results(cache["z", layer], model.blocks[layer].attn.W_O)  # [batch, pos, head, d_model]
        out.append(heads.permute(2, 0, 1, 3))
        if not model.cfg.attn_only:
            out.append(cache["mlp_out", layer].unsqueeze(0))
    return torch.cat(out)


def _reader_gradients(
    model: Transformer, clean: Tensor, corrupted: Tensor, metric: Metric, ig_steps: int
) -> tuple[Tensor, Tensor]:
    """The gradient of the metric at every reader's input [reader, batch, pos, d_model] (summed
    over the ig_steps points, each weighted 1/ig_steps) and the corrupted logits."""
    cfg, batch = model.cfg, clean.shape[0]
    with torch.no_grad():
        _, ends = model.run_with_cache(torch.cat([clean, corrupted]), names_filter="hook_embed")
    clean_embed, corrupted_embed = ends["hook_embed"].split(batch)
    alpha = (torch.arange(ig_steps, dtype=clean_embed.dtype, device=clean.device) / ig_steps).view(-1, 1, 1, 1)
    embed = (corrupted_embed + alpha * (clean_embed - corrupted_embed)).flatten(0, 1)  # [steps * batch, pos, d]
    live: dict[str, Tensor] = {}

    def interpolate(x: Tensor, hook: HookPoint) -> Tensor:
        return embed.detach().requires_grad_()

    def keep(x: Tensor, hook: HookPoint) -> Tensor:
        live[hook.name] = x = x.view_as(x)  # its own node: the gradient of this reader alone
        return x

    readers = [f"blocks.{l}.hook_{x}_input" for l in range(cfg.n_layers) for x in "qkv"]
    if not cfg.attn_only:
        readers += [f"blocks.{l}.hook_mlp_in" for l in range(cfg.n_layers)]
    readers.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    split = model.split_qkv_input
    model.split_qkv_input = True
    try:
        with torch.enable_grad(), model.hooks([("hook_embed", interpolate), (readers, keep)]):
            logits = model(corrupted.repeat(ig_steps, 1))
            value = metric(logits.view(ig_steps, batch, *logits.shape[1:])).mean()
            grads = dict(zip(live, torch.autograd.grad(value, list(live.values())), strict=True))
    finally:
        model.split_qkv_input = split
    out = []
    for layer in range(cfg.n_layers):
        for x in "qkv":  # [steps * batch, pos, head, d] -> [head, batch, pos, d]
            g = grads[f"blocks.{layer}.hook_{x}_input"]
            out.append(g.view(ig_steps, batch, *g.shape[1:]).sum(0).permute(2, 0, 1, 3))
        if not cfg.attn_only:
            g = grads[f"blocks.{layer}.hook_mlp_in"]
            out.append(g.view(ig_steps, batch, *g.shape[1:]).sum(0).unsqueeze(0))
    g = grads[readers[-1]]
    out.append(g.view(ig_steps, batch, *g.shape[1:]).sum(0).unsqueeze(0))
    return torch.cat(out), logits.detach()[:batch]


def edge_attribution(
    model: Transformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    ig_steps: int = 1,
    description: str = "",
) -> EdgeScores:
    """EAP (ig_steps=1) or EAP-IG scores of every edge; see the module docstring."""
    if isinstance(metric, Accuracy):
        raise ToylensError("edge attribution needs a differentiable metric: use logit_diff or neg_loss, not accuracy")
    if ig_steps < 1:
        raise ToylensError(f"ig_steps must be at least 1, not {ig_steps}")
    device = next(model.parameters()).device
    clean, corrupted, metric = clean_tokens.to(device), corrupted_tokens.to(device), metric.to(device)
    grads, corrupted_logits = _reader_gradients(model, clean, corrupted, metric, ig_steps)
    with torch.no_grad():
        delta = _writer_outputs(model, clean) - _writer_outputs(model, corrupted)  # [writer, batch, pos, d]
        scores = delta.flatten(1) @ grads.flatten(1).T  # [writer, reader]
        scores = scores.masked_fill(~edge_mask(model).to(device), float("nan"))
        m_clean = float(metric(model(clean)).mean())
    m_corrupted = float(metric(corrupted_logits).mean())
    span = m_clean - m_corrupted
    return EdgeScores(
        scores=scores.cpu(),
        normalized=(scores / span if span != 0 else torch.full_like(scores, float("nan"))).cpu(),
        writers=[w for w, _ in _writers(model)],
        readers=[r for r, _ in _readers(model)],
        clean=m_clean,
        corrupted=m_corrupted,
        metric=metric.name,
        metric_description=metric.description,
        ig_steps=ig_steps,
        corruption=description,
    )
