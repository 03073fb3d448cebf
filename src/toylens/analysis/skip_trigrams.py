"""Skip-trigrams of the layer-0 heads, read from the weights (Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits": one-layer attention-only transformers).

A skip-trigram "a … b → c": a destination (query) token b attends back to a source (key) token a,
and attending to a raises the logit of output c. For head h of layer 0, with the token
embedding W_E and the unembedding W_U:

    QK[b, a] = W_E[b] W_Q W_K^T W_E[a]^T / sqrt(d_head)   the attention score b gives a
    OV[a, c] = W_E[a] W_V W_O W_U[:, c]                    attending to a -> logit of c

built from `circuits.full_qk_tokens` and `circuits.full_ov` (FactoredMatrix, in float64). With
LayerNorm, its gain and centring are folded into W_Q, W_K, W_V and W_U and the input-dependent scale
is left out, as `circuits` does; biases and the positional embeddings are left out (token
embeddings only, the standard reading). Only differences within a row matter (a softmax ignores a
constant added to one query's scores; the loss one added to all logits), so rows are centred over
the candidate tokens:

    output score(a, c)      = OV[a, c] - mean_c' OV[a, c']
    source score(a)         = max_c output score(a, c)
    destination score(b, a) = QK[b, a] - mean_a' QK[b, a']

Per head: the `n_sources` sources with the largest source score; for each, its `n_outputs`
top-scoring outputs and the `n_destinations` destinations with the largest destination score.

Candidates: sources and destinations are the tokens that occur in the analysis examples, at most
the `max_tokens` most frequent (`frequent_tokens`); outputs are the same tokens when outputs are
tokens (language modelling), else every class. Rarely seen tokens have barely trained embeddings
whose circuits are noise, and a 50,257-token vocabulary stays small this way; OV rows are built
`chunk` sources at a time, so no candidates x candidates matrix is held per head.

Which models: for a one-layer attention-only model (`whole_model`) this is the model's whole
attention contribution to the logits (up to the LayerNorm scale, biases and positions). For any
other model it is computed for the layer-0 heads only, along their direct path (output read by
the unembedding straight away), which ignores what MLPs and later layers do with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from toylens.analysis.circuits import full_ov, full_qk_tokens
from toylens.model import FactoredMatrix, Transformer
from toylens.rundir.results import Result

Labels = Callable[[Tensor], list[str]]


@dataclass
class SkipTrigrams(Result):
    """Each layer-0 head's top skip-trigrams (see the module docstring for the scores)."""

    sources: Tensor
    """[head, rank] source token ids, largest source score first."""
    source_scores: Tensor
    outputs: Tensor
    """[head, rank, output_rank] the output ids each source promotes most."""
    output_scores: Tensor
    destinations: Tensor
    """[head, rank, destination_rank] the destination token ids that attend to each source most."""
    destination_scores: Tensor
    token_labels: dict[str, str]
    """Input id (as a string) -> label, for every source and destination."""
    output_labels: dict[str, str]
    """Output id (as a string) -> label, for every output."""
    layer: int
    whole_model: bool
    folded_ln: bool
    n_candidates: int
    n_output_candidates: int
    candidates: str
    """Which tokens were candidates, in words."""
    axes = {
        "sources": ("head", "rank"),
        "source_scores": ("head", "rank"),
        "outputs": ("head", "rank", "output_rank"),
        "output_scores": ("head", "rank", "output_rank"),
        "destinations": ("head", "rank", "destination_rank"),
        "destination_scores": ("head", "rank", "destination_rank"),
    }

    def trigrams(self, head: int) -> list[tuple[str, str, str, float]]:
        """(source, its top destination, its top output, source score) for each top source."""
        rows = zip(
            self.sources[head].tolist(), self.destinations[head, :, 0].tolist(), self.outputs[head, :, 0].tolist()
        )
        return [
            (self.token_labels[str(a)], self.token_labels[str(b)], self.output_labels[str(c)], s)
            for (a, b, c), s in zip(rows, self.source_scores[head].tolist())
        ]


def frequent_tokens(
    tokens: Int[Tensor, "batch pos"], valid: Bool[Tensor, "batch pos"], max_tokens: int
) -> Int[Tensor, " ids"]:
    """The ids at the `valid` positions, most frequent first (ties: lower id first), at most `max_tokens`."""
    ids, counts = tokens[valid].unique(return_counts=True)  # ids ascending
    order = torch.sort(counts, descending=True, stable=True).indices  # a stable sort keeps lower ids first
    return ids[order][:max_tokens]


def _row_means(m: FactoredMatrix) -> Tensor:
    """[..., ldim] the mean of each row of A @ B, from the small side: A @ (B's column mean)."""
    return (m.A @ m.B.mean(-1).unsqueeze(-1)).squeeze(-1)


def _source_scores(ov: FactoredMatrix, ov_mean: Tensor, chunk: int) -> Tensor:
    """[head, source] the largest centred OV entry of each source row, `chunk` rows at a time."""
    parts = []
    for rows in torch.arange(ov.ldim, device=ov.A.device).split(chunk):
        parts.append((ov.rows(rows).AB - ov_mean[:, rows, None]).amax(-1))
    return torch.cat(parts, -1)


@torch.no_grad()
def top_skip_trigrams(
    model: Transformer,
    candidates: Int[Tensor, " ids"],
    out_candidates: Int[Tensor, " out_ids"],
    *,
    n_sources: int = 10,
    n_outputs: int = 3,
    n_destinations: int = 3,
    chunk: int = 256,
) -> dict[str, Tensor]:
    """The arrays of `SkipTrigrams` (ids, not positions among the candidates), for layer 0."""
    device = model.W_E.device
    candidates, out_candidates = candidates.to(device), out_candidates.to(device)
    ov = full_ov(model)[0].rows(candidates).cols(out_candidates).to(torch.float64)  # [head, K, O]
    qk = full_qk_tokens(model)[0].rows(candidates).cols(candidates).to(torch.float64)  # [head, K, K]
    n_cand, n_out = len(candidates), len(out_candidates)
    ov_mean, qk_mean = _row_means(ov), _row_means(qk)  # [head, K]: over outputs, over sources
    src_score, src = _source_scores(ov, ov_mean, chunk).topk(min(n_sources, n_cand), -1)  # [head, S]
    heads, d_head = torch.arange(src.shape[0], device=device)[:, None], ov.mdim
    # each head's own sources: rows of its OV factor A, columns of its QK factor B
    ov_rows = FactoredMatrix(ov.A.gather(1, src[..., None].expand(-1, -1, d_head)), ov.B)
    out_score, out = (ov_rows.AB - ov_mean[heads, src][..., None]).topk(min(n_outputs, n_out), -1)
    qk_cols = FactoredMatrix(qk.A, qk.B.gather(2, src[:, None, :].expand(-1, qk.mdim, -1)))
    dest_values = (qk_cols.AB - qk_mean[..., None]) / math.sqrt(d_head)  # [head, destination, S]
    dest_score, dest = dest_values.mT.topk(min(n_destinations, n_cand), -1)  # [head, S, D]
    arrays = {
        "sources": candidates[src],
        "source_scores": src_score,
        "outputs": out_candidates[out],
        "output_scores": out_score,
        "destinations": candidates[dest],
        "destination_scores": dest_score,
    }
    return {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in arrays.items()}


def skip_trigrams(
    model: Transformer,
    candidates: Int[Tensor, " ids"],
    out_candidates: Int[Tensor, " out_ids"],
    token_labels: Labels,
    output_labels: Labels,
    *,
    candidates_text: str = "",
    n_sources: int = 10,
) -> SkipTrigrams:
    """`top_skip_trigrams` as a labelled result; `candidates_text` says how the candidates were chosen."""
    arrays = top_skip_trigrams(model, candidates, out_candidates, n_sources=n_sources)
    ins = sorted(set(arrays["sources"].flatten().tolist()) | set(arrays["destinations"].flatten().tolist()))
    outs = sorted(set(arrays["outputs"].flatten().tolist()))
    return SkipTrigrams(
        **arrays,
        token_labels=dict(zip(map(str, ins), token_labels(torch.tensor(ins, dtype=torch.long)))),
        output_labels=dict(zip(map(str, outs), output_labels(torch.tensor(outs, dtype=torch.long)))),
        layer=0,
        whole_model=model.cfg.n_layers == 1 and model.cfg.attn_only,
        folded_ln=model.cfg.normalization == "LN",
        n_candidates=len(candidates),
        n_output_candidates=len(out_candidates),
        candidates=candidates_text,
    )
