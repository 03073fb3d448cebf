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

A circuit is a set of edges; its faithfulness is the fraction of the metric gap between the whole
graph and the empty circuit it recovers with every other edge ablated, exactly (one forward):

    f = faithfulness(model, clean_tokens, corrupted_tokens, metric, circuit(eap, top=20))
    f = smallest_circuit(model, clean_tokens, corrupted_tokens, metric, eap, target=0.8)
    f.n_edges, f.recovered, dict(zip(f.sizes, f.curve))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

from toylens.analysis import graph
from toylens.analysis.metrics import Accuracy, Metric
from toylens.errors import ToylensError
from toylens.model import HookPoint, Transformer
from toylens.model import functional as core
from toylens.rundir.results import Result


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
        # [writer, batch, pos, d_model]
        delta = graph.tokens_writer_outputs(model, clean) - graph.tokens_writer_outputs(model, corrupted)
        scores = delta.flatten(1) @ grads.flatten(1).T  # [writer, reader]
        scores = scores.masked_fill(~graph.edge_mask(model).to(device), float("nan"))
        m_clean = float(metric(model(clean)).mean())
    m_corrupted = float(metric(corrupted_logits).mean())
    span = m_clean - m_corrupted
    return EdgeScores(
        scores=scores.cpu(),
        normalized=(scores / span if span != 0 else torch.full_like(scores, float("nan"))).cpu(),
        writers=[w for w, _ in graph.writers(model)],
        readers=[r for r, _ in graph.readers(model)],
        clean=m_clean,
        corrupted=m_corrupted,
        metric=metric.name,
        metric_description=metric.description,
        ig_steps=ig_steps,
        corruption=description,
    )


# --- circuits and their faithfulness ---------------------------------------------------------
ABLATIONS = ("corrupted", "mean", "zero")


def circuit(edges: EdgeScores, *, top: int | None = None, threshold: float | None = None) -> Tensor:
    """The edges [writer, reader] kept: the `top` largest |score|, or every |normalized| >= threshold."""
    if (top is None) == (threshold is None):
        raise ToylensError("give a circuit either top (edges) or threshold (|normalized| score)")
    score = edges.scores.nan_to_num(0).abs() if top is not None else edges.normalized.nan_to_num(0).abs()
    if threshold is not None:
        return score >= threshold
    keep = torch.zeros(score.numel(), dtype=torch.bool)
    keep[score.flatten().argsort(descending=True)[: int(top or 0)]] = True
    return keep.view(score.shape) & ~edges.scores.isnan()


@dataclass
class Faithfulness(Result):
    """How much of the metric gap between the whole graph (the clean run) and the empty circuit
    (every edge ablated) a circuit recovers when every edge outside it is ablated:
    recovered = (metric - ablated) / (clean - ablated). With the corrupted ablation the empty
    circuit is the corrupted run (ablated = corrupted); with the mean or zero ablation it is not."""

    recovered: float
    metric_value: float
    clean: float
    corrupted: float
    n_edges: int
    total_edges: int
    ablation: str
    circuit: Tensor
    ablated: float = float("nan")
    """The metric with every edge ablated (the empty circuit); NaN in results saved before it was."""
    target: float = float("nan")
    """`smallest_circuit`: the fraction of the gap the circuit was chosen to recover (else NaN)."""
    sizes: list[int] = field(default_factory=list)
    """`smallest_circuit`: the circuit sizes tried (the strongest n edges)..."""
    curve: list[float] = field(default_factory=list)
    """...and the fraction of the gap each recovered."""

    axes = {"circuit": ("writer", "reader")}


def faithfulness(
    model: Transformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    keep: Tensor,
    ablation: str = "corrupted",
) -> Faithfulness:
    """Run the clean input with every edge outside `keep` ([writer, reader], e.g. `circuit(...)`)
    ablated, exactly: each reader's own input (split q/k/v inputs, MLP input, the final stream)
    has each excluded writer's live output replaced by its ablated value, the corrupted run's
    ("corrupted"), its mean over the clean batch at each position ("mean") or zero ("zero").
    Every edge counts, those from the embeddings and those into the logits too; what no writer
    wrote (the attention biases b_O) is never ablated, and every LayerNorm normalises the reader's
    input as assembled. The gap is normalised by the empty circuit's run (one more forward)."""
    return _EdgeAblation(model, clean_tokens, corrupted_tokens, metric, ablation).result(keep)


def smallest_circuit(
    model: Transformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    edges: EdgeScores,
    target: float = 0.8,
    ablation: str = "corrupted",
) -> Faithfulness:
    """The fewest strongest edges (by |score|, `circuit(edges, top=n)`) that recover `target` of
    the gap, as `faithfulness` measures it. Sizes n on a grid growing ~1.4x (1, 2, 3, 4, 6, 8, 11,
    16, ... and every edge) are all tried, one forward each; the circuit is the first n that
    reaches the target (every edge when none does: recovery need not grow with n), and the
    result carries every size's recovered fraction (`sizes`, `curve`)."""
    run = _EdgeAblation(model, clean_tokens, corrupted_tokens, metric, ablation)
    total = int(run.edges.sum())
    sizes = sorted({min(total, round(1.4142**i)) for i in range(2 * total.bit_length() + 2)} | {total})
    curve = [run.recovered(run.value(circuit(edges, top=n))) for n in sizes]
    n = next((n for n, r in zip(sizes, curve, strict=True) if r >= target), total)
    result = run.result(circuit(edges, top=n))
    result.target, result.sizes, result.curve = target, sizes, curve
    return result


class _EdgeAblation:
    """The clean input with chosen edges ablated: the replacement outputs and the whole-graph,
    corrupted and empty-circuit metrics are computed once, then one forward per circuit."""

    def __init__(self, model: Transformer, clean: Tensor, corrupted: Tensor, metric: Metric, ablation: str):
        if ablation not in ABLATIONS:
            raise ToylensError(f"ablation {ablation!r}: expected one of {', '.join(ABLATIONS)}")
        weight = next(model.parameters())
        self.model, self.ablation, self.dtype, device = model, ablation, weight.dtype, weight.device
        self.clean, corrupted, self.metric = clean.to(device), corrupted.to(device), metric.to(device)
        self.edges = graph.edge_mask(model).to(device)
        with torch.no_grad():
            self.replacement = {
                "corrupted": lambda: graph.tokens_writer_outputs(model, corrupted),
                "mean": lambda: graph.tokens_writer_outputs(model, self.clean).mean(1, keepdim=True),
                "zero": lambda: torch.zeros(1, 1, 1, 1, device=device),
            }[ablation]()
            self.m_clean = float(self.metric(model(self.clean)).mean())
            self.m_corrupted = float(self.metric(model(corrupted)).mean())
        self.m_ablated = self.value(torch.zeros_like(self.edges))

    def value(self, keep: Tensor) -> float:
        """The metric with every edge outside `keep` [writer, reader] ablated."""
        drop = (self.edges & ~keep.to(self.edges.device)).to(self.dtype)
        with torch.no_grad():
            return float(self.metric(_ablated_run(self.model, self.clean, self.replacement, drop)).mean())

    def recovered(self, value: float) -> float:
        span = self.m_clean - self.m_ablated
        return (value - self.m_ablated) / span if span != 0 else float("nan")

    def result(self, keep: Tensor) -> Faithfulness:
        kept = self.edges & keep.to(self.edges.device)
        value = self.value(kept)
        return Faithfulness(
            recovered=self.recovered(value),
            metric_value=value,
            clean=self.m_clean,
            corrupted=self.m_corrupted,
            n_edges=int(kept.sum()),
            total_edges=int(self.edges.sum()),
            ablation=self.ablation,
            circuit=kept.cpu(),
            ablated=self.m_ablated,
        )


def _ablated_run(model: Transformer, tokens: Tensor, replacement: Tensor, drop: Tensor) -> Tensor:
    """Logits of `tokens` with reader r's input less sum over writers w of drop[w, r] *
    (out_w - replacement[w]). Writers come in forward order, so a reader's writers are those seen."""
    cfg = model.cfg
    live: list[Tensor] = []
    columns = {name: i for i, (name, _) in enumerate(graph.readers(model))}

    def removed(columns_: Tensor) -> Tensor:  # [batch, pos, n_columns, d_model]
        n = len(live)
        change = torch.stack(live) - replacement[:n].expand(n, *live[0].shape)
        return torch.einsum("wbpd,wc->bpcd", change, drop[:n, columns_])

    def embed(x: Tensor, hook: HookPoint) -> None:
        live.append(x)

    def heads(z: Tensor, hook: HookPoint) -> None:
        layer = int(hook.name.split(".")[1])
        live.extend(core.head_results(z, model.blocks[layer].attn.W_O).unbind(2))

    def mlp(x: Tensor, hook: HookPoint) -> None:
        live.append(x)

    def split_input(x: Tensor, hook: HookPoint) -> Tensor:
        layer, kind = int(hook.name.split(".")[1]), hook.name.rsplit("_", 2)[-2]
        cols = torch.tensor([columns[f"L{layer}H{h}.{kind}"] for h in range(cfg.n_heads)], device=x.device)
        return x - removed(cols)

    def stream(x: Tensor, hook: HookPoint) -> Tensor:
        name = "logits" if hook.name.endswith("resid_post") else f"MLP{hook.name.split('.')[1]}"
        return x - removed(torch.tensor([columns[name]], device=x.device)).squeeze(2)

    layers = range(cfg.n_layers)
    hooks = [
        ("blocks.0.hook_resid_pre", embed),
        ([f"blocks.{l}.attn.hook_z" for l in layers], heads),
        ([f"blocks.{l}.hook_{x}_input" for l in layers for x in "qkv"], split_input),
        (f"blocks.{cfg.n_layers - 1}.hook_resid_post", stream),
    ]
    if not cfg.attn_only:  # the MLP reads before it writes: its input hook comes first
        hooks += [
            ([f"blocks.{l}.hook_mlp_in" for l in layers], stream),
            ([f"blocks.{l}.hook_mlp_out" for l in layers], mlp),
        ]
    split = model.split_qkv_input
    model.split_qkv_input = True
    try:
        with model.hooks(hooks):
            return model(tokens)
    finally:
        model.split_qkv_input = split
