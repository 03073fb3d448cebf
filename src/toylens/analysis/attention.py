"""Attention patterns and head scores averaged over data.

A head score measures how much a head attends along one *relation*: a boolean mask
`[batch, query, key]` marking, for each query position, the key positions the relation asks for.

    score[layer, head] = mean over the (sequence, query) pairs where the relation marks any key
                         of the attention the head puts on the marked keys (0..1)
    hit[layer, head]   = fraction of those pairs whose most-attended key is a marked one
    layer_hit[layer]   = fraction of those pairs where some head of the layer has a marked key as
                         its most-attended one (heads often split the cases between them)

The relations (one small function each):
- `previous_token`: key q-1 (queries q >= 1).
- `first_token`: key 0 (queries q >= 1).
- `duplicate_token`: earlier keys holding the same token as the query.
- `induction`: keys right after an earlier occurrence of the query's token.
- `next_output`: keys holding the token this position must output next (its target); for sorting
  that is "attend from each output position to the value it must write", and at SEP to the minimum.
- `repeat_offset(half, offset)`: on `[BOS, r_1..r_L, r_1..r_L]`, key q - L + offset for the
  second-half queries; offset 0 is the field's duplicate-token score, offset 1 its induction score
  (attention to the token after the previous occurrence).

`head_scores(model, tokens, relations)` runs the model in batches and averages; the standard set on
repeated random tokens is `repeated_token_scores(model, ...)`, with `repeated_tokens` building the
inputs from the model's own vocabulary (any size, no tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from toylens.config import derived
from toylens.model import Transformer, act_name
from toylens.rundir.results import Result
from toylens.tasks.base import IGNORE
from toylens.tasks.repeated import HALF

Relation = Callable[[Tensor, Tensor], Tensor]  # (tokens [b, p], targets [b, p]) -> mask [b, q, k]


# ------------------------------------------------------------------------------------- relations


def previous_token(tokens: Int[Tensor, "batch pos"], targets: Tensor | None = None) -> Bool[Tensor, "batch q k"]:
    b, p = tokens.shape
    return torch.eye(p, dtype=torch.bool, device=tokens.device).roll(-1, dims=1).tril(-1).expand(b, p, p)


def first_token(tokens: Int[Tensor, "batch pos"], targets: Tensor | None = None) -> Bool[Tensor, "batch q k"]:
    b, p = tokens.shape
    mask = torch.zeros(p, p, dtype=torch.bool, device=tokens.device)
    mask[1:, 0] = True
    return mask.expand(b, p, p)


def duplicate_token(tokens: Int[Tensor, "batch pos"], targets: Tensor | None = None) -> Bool[Tensor, "batch q k"]:
    same = tokens[:, :, None] == tokens[:, None, :]
    return same & _strictly_before(tokens.shape[1], tokens.device)


def induction(tokens: Int[Tensor, "batch pos"], targets: Tensor | None = None) -> Bool[Tensor, "batch q k"]:
    """Key k is marked when token k-1 equals the query's token (k-1 < q): the token that followed
    an earlier occurrence of the current one."""
    b, p = tokens.shape
    mask = torch.zeros(b, p, p, dtype=torch.bool, device=tokens.device)
    mask[:, :, 1:] = (tokens[:, :, None] == tokens[:, None, :-1]) & _strictly_before(p, tokens.device)[:, :-1]
    return mask


def next_output(tokens: Int[Tensor, "batch pos"], targets: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch q k"]:
    """Keys (at or before the query) holding the query's target token; none where there is no target."""
    b, p = tokens.shape
    causal = torch.ones(p, p, dtype=torch.bool, device=tokens.device).tril()
    return (tokens[:, None, :] == targets[:, :, None]) & causal & (targets != IGNORE)[:, :, None]


def repeat_offset(half: int, offset: int) -> Relation:
    """On `[BOS, r_1..r_half, r_1..r_half]`: key q - half + offset for second-half queries."""

    def relation(tokens: Int[Tensor, "batch pos"], targets: Tensor | None = None) -> Bool[Tensor, "batch q k"]:
        b, p = tokens.shape
        mask = torch.zeros(p, p, dtype=torch.bool, device=tokens.device)
        q = torch.arange(half + 1, 2 * half + 1, device=tokens.device)
        mask[q, q - half + offset] = True
        return mask.expand(b, p, p)

    return relation


def _strictly_before(p: int, device: torch.device) -> Tensor:
    return torch.ones(p, p, dtype=torch.bool, device=device).tril(-1)


# ------------------------------------------------------------------------------------ patterns


@torch.no_grad()
def attention_patterns(model: Transformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch layer head q k"]:
    """Every layer's attention pattern for `tokens`."""
    names = [act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([cache[n] for n in names], dim=1)


@dataclass
class RelationScore:
    score: Float[Tensor, ...]
    hit: Float[Tensor, ...]
    layer_hit: Float[Tensor, ...]


@torch.no_grad()
def head_scores(
    model: Transformer,
    tokens: Int[Tensor, "batch pos"],
    relations: Mapping[str, Relation],
    targets: Int[Tensor, "batch pos"] | None = None,
    *,
    per_position: bool = False,
    batch_size: int = 64,
) -> dict[str, RelationScore]:
    """Average each relation's score and hit rates over `tokens`: score and hit [n_layers, n_heads]
    and layer_hit [n_layers], or with `per_position` a trailing pos axis (NaN where the relation
    marks nothing)."""
    device = next(model.parameters()).device
    targets = torch.full_like(tokens, IGNORE) if targets is None else targets
    sums: dict[str, list[Tensor]] = {}
    for idx in torch.arange(tokens.shape[0]).split(batch_size):
        tok, tgt = tokens[idx].to(device), targets[idx].to(device)
        pattern = attention_patterns(model, tok)  # [b, l, h, q, k]
        top = pattern.argmax(-1, keepdim=True)
        for name, relation in relations.items():
            mask = relation(tok, tgt)[:, None, None]  # [b, 1, 1, q, k]
            defined = mask.any(-1)  # [b, 1, 1, q]
            hit = mask.expand_as(pattern).gather(-1, top).squeeze(-1)  # [b, l, h, q]
            count = defined.float().expand(pattern.shape[:4])
            parts = [(pattern * mask).sum(-1), hit.float(), hit.any(2, keepdim=True).float(), count]
            parts = [x.sum(0) if per_position else x.sum((0, 3)) for x in parts]
            sums[name] = parts if name not in sums else [a + b for a, b in zip(sums[name], parts)]
    return {name: RelationScore(s / n, h / n, (lh / n[:, :1]).squeeze(1)) for name, (s, h, lh, n) in sums.items()}


# ------------------------------------------------------------------------ repeated random tokens


def repeated_tokens(
    vocab: int | Tensor, n_seq: int, half: int, bos: int | None = None, seed: int = 0
) -> Int[Tensor, "batch pos"]:
    """`[BOS, r_1..r_half, r_1..r_half]`, r uniform (with replacement) over `vocab` (a size, or the
    token ids allowed). Without a BOS token, position 0 holds one more random token."""
    ids = torch.arange(vocab) if isinstance(vocab, int) else vocab
    gen = torch.Generator().manual_seed(seed)
    r = ids[torch.randint(len(ids), (n_seq, half), generator=gen)]
    first = ids[torch.randint(len(ids), (n_seq, 1), generator=gen)] if bos is None else torch.full((n_seq, 1), bos)
    return torch.cat([first, r, r], dim=1)


REPEATED_SCORES = {
    "previous_token": "mean attention to the previous position (all queries but the first)",
    "first_token": "mean attention to position 0 (all queries but the first)",
    "duplicate_token": "mean attention from each second-half token to its first occurrence",
    "induction": "mean attention from each second-half token to the token after its first occurrence",
}


@dataclass
class HeadScores(Result):
    """Head scores on one dataset: name -> [n_layers, n_heads] score and argmax hit rate."""

    scores: dict[str, Tensor]
    hits: dict[str, Tensor]
    layer_hits: dict[str, Tensor]
    descriptions: dict[str, str]
    dataset: str
    axes = {"scores": ("layer", "head"), "hits": ("layer", "head"), "layer_hits": ("layer",)}


def repeated_token_scores(
    model: Transformer,
    vocab: int | Tensor,
    bos: int | None = None,
    *,
    n_seq: int = 100,
    half: int = HALF,
    seed: int = 0,
) -> HeadScores:
    """Previous-token, first-token, duplicate-token and induction scores on `n_seq` sequences
    `[BOS, r_1..r_half, r_1..r_half]` (half shrinks to fit n_ctx)."""
    half = min(half, (derived(model.cfg.n_ctx, "n_ctx") - 1) // 2)
    tokens = repeated_tokens(vocab, n_seq, half, bos, seed)
    n_vocab = vocab if isinstance(vocab, int) else len(vocab)
    relations = {
        "previous_token": previous_token,
        "first_token": first_token,
        "duplicate_token": repeat_offset(half, 0),
        "induction": repeat_offset(half, 1),
    }
    out = head_scores(model, tokens, relations)
    bos_text = "BOS" if bos is not None else "a random token"
    return HeadScores(
        scores={k: v.score for k, v in out.items()},
        hits={k: v.hit for k, v in out.items()},
        layer_hits={k: v.layer_hit for k, v in out.items()},
        descriptions=REPEATED_SCORES,
        dataset=f"{n_seq} sequences [{bos_text}, r_1..r_{half}, r_1..r_{half}], "
        f"r uniform over {n_vocab} tokens, seed {seed}",
    )


@dataclass
class PositionScores(Result):
    """One relation's score and hit rate per query position: [n_layers, n_heads, pos] (NaN where
    the relation marks no key)."""

    relation: str
    description: str
    scores: Tensor
    hits: Tensor
    layer_hits: Tensor
    n_examples: int
    axes = {"scores": ("layer", "head", "pos"), "hits": ("layer", "head", "pos"), "layer_hits": ("layer", "pos")}


@dataclass
class AttentionPatterns(Result):
    """Attention patterns of a few example inputs, with their token labels (for attention views)."""

    tokens: Tensor
    labels: list[list[str]]
    patterns: Tensor
    sources: list[str]
    axes = {"tokens": ("example", "pos"), "patterns": ("example", "layer", "head", "query", "key")}
