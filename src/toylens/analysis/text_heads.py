"""Readings of attention on text: what each head of a language-model or classification run attends to.

`text_heads(model, tokens, valid, ...)` runs the model on the analysis examples (their attention
patterns, nothing else) and measures, for every head (layer, head):

Which queries count: position q of example b when `valid[b, q]` (the input itself: every position of
a language-model window; a review up to its label position, never its padding) and q >= 1 (query 0
can only attend to itself). Every pattern row sums to 1, so a sum of attention over the counted
queries divided by their number `n_queries` is a share of the head's attention.

- **Top (query token, attended token) pairs**: mass(a, b) = the attention summed over every counted
  query holding token a and key (k <= q) holding token b; `pair_share` = mass / n_queries, the
  `top` largest per head, with `pair_count` = how many (query, key) position pairs hold (a, b).
- **Fractions** (`fractions[name]`, the share of the head's attention on the keys a relation marks,
  averaged over all counted queries): `first_position` (key 0), `bos` (key 0 or a key holding a
  boundary token: end-of-text, [CLS], [SEP], padding), `punctuation` (keys whose token is
  punctuation, see `is_punctuation`), `previous_token` (key q-1), `duplicate_token` (earlier copies
  of the query's token), `induction` (keys right after an earlier copy). The relations are those of
  `toylens.analysis.attention`.
- **Scores** (`scores[name]`, as `attention.head_scores` defines them: averaged only over the
  counted queries where the relation marks some key): `previous_token`, `duplicate_token`,
  `induction`. The previous-token score equals its fraction (every counted query has a q-1).
- **Positional share**: the positional prediction of a row is the head's mean pattern at that query
  position, pred[q, k] = mean over the counted examples of A[b, q, k], a function of the query
  position and the offset q - k only, never of the tokens. Then

      positional_share = 1 - mean over counted (b, q) of TV(A[b, q, :], pred[q, :]),
      TV(x, y) = 1/2 sum_k |x_k - y_k|   (total-variation distance, 0..1)

  1 = the head attends by position alone (previous-token, first-position or uniform heads: every row
  equals its mean); near 0 = where it attends changes completely with the tokens. With few examples
  per position the mean includes the row itself, which pulls the share up by about 1/n_examples.
  `offset_profile[l, h, d]` = mean over counted queries with q >= d of A[b, q, q - d]: the mean
  attention at each offset (NaN where no query reaches it).
- **Head types** (`head_types`, thresholds in `THRESHOLDS`), a list per head in priority order
  (the first is the head's main type; none listed = "mixed"): induction (induction score on
  repeated random tokens >= 0.4, from `attention.repeated_token_scores`), previous-token
  (previous-token score >= 0.4), duplicate-token (duplicate-token score >= 0.4), BOS (`bos` fraction
  >= 0.5), punctuation (punctuation fraction >= 0.3 and >= twice `punctuation_baseline`, the share a
  head attending uniformly to its keys would put there), positional (positional share >= 0.8) or
  content (positional share < 0.5).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from toylens.analysis import attention as att
from toylens.model import Transformer
from toylens.rundir.results import Result
from toylens.tasks.base import IGNORE
from toylens.tasks.text import is_punctuation

THRESHOLDS = {
    "induction": 0.4,
    "previous-token": 0.4,
    "duplicate-token": 0.4,
    "BOS": 0.5,
    "punctuation": 0.3,
    "punctuation_over_baseline": 2.0,
    "positional": 0.8,
    "content": 0.5,
}
"""Head-type thresholds (see the module docstring for what each is compared with)."""
TYPES = ("induction", "previous-token", "duplicate-token", "BOS", "punctuation", "positional", "content")
"""Every head type, in priority order."""
PATTERN_BUDGET = 1 << 23
"""Attention probabilities in one batch of patterns, at most (32 MB in float32)."""
RELATIONS = {
    "first_position": "key 0",
    "bos": "key 0 or a key holding a boundary token (end-of-text, [CLS], [SEP], padding)",
    "punctuation": "keys holding a punctuation token",
    "previous_token": "key q-1",
    "duplicate_token": "earlier copies of the query's token",
    "induction": "keys right after an earlier copy of the query's token",
}
SCORED = ("previous_token", "duplicate_token", "induction")
"""The relations whose conditional score is kept (as `attention.head_scores` defines it)."""
Batches = Callable[[], Iterable[tuple[Tensor, Tensor, Tensor]]]
"""A fresh iterator over (tokens [b, p], valid [b, p], patterns [b, layer, head, q, k]) per call."""


@dataclass
class TextHeads(Result):
    """Readings of every head's attention on text (see the module docstring for each definition)."""

    pair_query: Tensor
    """[layer, head, rank] the query token of each top pair, largest share first (rank < top)."""
    pair_key: Tensor
    """[layer, head, rank] the attended token."""
    pair_share: Tensor
    """[layer, head, rank] the pair's attention mass / n_queries."""
    pair_count: Tensor
    """[layer, head, rank] (query, key) position pairs that hold the token pair."""
    fractions: dict[str, Tensor]
    scores: dict[str, Tensor]
    positional_share: Tensor
    offset_profile: Tensor
    repeated_induction: Tensor
    """[layer, head] induction score on repeated random tokens (`attention.repeated_token_scores`)."""
    punctuation_baseline: float
    types: list[list[list[str]]]
    """types[layer][head]: the head's types in priority order (empty: mixed)."""
    labels: dict[str, str]
    """Token id (as a string) -> readable label, for every id in the top pairs."""
    thresholds: dict[str, float]
    definitions: dict[str, str]
    n_examples: int
    n_queries: int
    axes = {
        "pair_query": ("layer", "head", "rank"),
        "pair_key": ("layer", "head", "rank"),
        "pair_share": ("layer", "head", "rank"),
        "pair_count": ("layer", "head", "rank"),
        "fractions": ("layer", "head"),
        "scores": ("layer", "head"),
        "positional_share": ("layer", "head"),
        "offset_profile": ("layer", "head", "offset"),
        "repeated_induction": ("layer", "head"),
    }

    def primary(self, layer: int, head: int) -> str:
        """The head's main type: its first, or "mixed" when it has none."""
        kinds = self.types[layer][head]
        return kinds[0] if kinds else "mixed"

    def pairs(self, layer: int, head: int) -> list[tuple[str, str, float]]:
        """The head's top pairs as (query label, attended label, share)."""
        rows = zip(self.pair_query[layer, head].tolist(), self.pair_key[layer, head].tolist())
        shares = self.pair_share[layer, head].tolist()
        return [(self.labels[str(a)], self.labels[str(b)], s) for (a, b), s in zip(rows, shares) if a >= 0]


# ----------------------------------------------------------------------------------- token facts


def input_positions(targets: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
    """The positions that are part of an example's input: at or before its last target (all of a
    language-model window; a review without the padding after its label position)."""
    return (targets != IGNORE).long().flip(1).cumsum(1).flip(1) > 0


def _counted(valid: Tensor) -> Tensor:
    """Counted queries: valid and not position 0."""
    first = torch.zeros_like(valid)
    first[:, 0] = True
    return valid & ~first


# ------------------------------------------------------------------------------- the readings


class _Sums:
    """Pass-one sums over batches: relation masses, mean rows, pairs; then pass two's distances."""

    def __init__(self, shape: tuple[int, int, int], pair_index: Tensor, n_pairs: int, device: torch.device):
        n_layers, n_heads, p = shape
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        self.mass = {name: z(n_layers, n_heads) for name in RELATIONS}
        self.defined = {name: z(1) for name in SCORED}
        self.rows, self.row_count = z(n_layers, n_heads, p, p), z(p)
        self.pairs = z(n_layers * n_heads, n_pairs)
        self.pair_index, self.done = pair_index, 0
        self.baseline, self.distance = z(1), z(n_layers, n_heads)

    def add(self, pattern: Tensor, masks: dict[str, Tensor], counted: Tensor, punct: Tensor) -> None:
        """One batch of pass one (pattern float64 [b, l, h, q, k], masks [b, q, k], counted [b, q])."""
        w = counted.double()
        for name, mask in masks.items():
            self.mass[name] += torch.einsum("blhqk,bqk,bq->lh", pattern, mask.double(), w)
            if name in self.defined:
                self.defined[name] += (mask.any(-1) & counted).sum()
        self.rows += torch.einsum("blhqk,bq->lhqk", pattern, w)
        self.row_count += w.sum(0)
        causal = torch.ones(pattern.shape[-2:], dtype=torch.bool, device=pattern.device).tril()
        entries = counted[:, :, None] & causal  # [b, q, k], in the order the pair index was built
        values = pattern.permute(0, 3, 4, 1, 2)[entries].flatten(1)  # [entries, l * h]
        index = self.pair_index[self.done : self.done + len(values)]
        self.pairs.index_add_(1, index, values.T)
        self.done += len(values)
        keys = torch.arange(1, pattern.shape[-1] + 1, device=pattern.device, dtype=torch.float64)
        self.baseline += ((punct.double().cumsum(1) / keys) * w).sum()

    def mean_rows(self) -> Tensor:
        return self.rows / self.row_count.clamp_min(1)[:, None]

    def add_distance(self, pattern: Tensor, counted: Tensor, mean_rows: Tensor) -> None:
        """One batch of pass two: the total-variation distance of each counted row to its mean row."""
        tv = 0.5 * (pattern - mean_rows).abs().sum(-1)  # [b, l, h, q]
        self.distance += torch.einsum("blhq,bq->lh", tv, counted.double())


def _masks(tokens: Tensor, boundary: Tensor, punct_ids: Tensor) -> dict[str, Tensor]:
    """Every relation's key mask [b, q, k] for one batch."""
    p = tokens.shape[1]
    first = att.first_token(tokens).clone()
    first[:, 0, 0] = True  # (query 0 is never counted; this only keeps the mask simple)
    causal = torch.ones(p, p, dtype=torch.bool, device=tokens.device).tril()
    is_boundary = torch.isin(tokens, boundary)[:, None, :] & causal
    return {
        "first_position": first,
        "bos": first | is_boundary,
        "punctuation": torch.isin(tokens, punct_ids)[:, None, :] & causal,
        "previous_token": att.previous_token(tokens),
        "duplicate_token": att.duplicate_token(tokens),
        "induction": att.induction(tokens),
    }


def _pair_ids(tokens: Tensor, valid: Tensor, n_vocab: int) -> tuple[Tensor, Tensor]:
    """Every counted (b, q, k <= q) entry's token pair a * n_vocab + b, in (b, q, k) order:
    (the distinct pairs, each entry's index among them)."""
    p = tokens.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool, device=tokens.device).tril()
    entries = _counted(valid)[:, :, None] & causal
    ids = (tokens[:, :, None] * n_vocab + tokens[:, None, :]).expand_as(entries)[entries]
    return torch.unique(ids, return_inverse=True)


def read_attention(
    batches: Batches,
    tokens: Int[Tensor, "batch pos"],
    valid: Bool[Tensor, "batch pos"],
    shape: tuple[int, int],
    *,
    n_vocab: int,
    boundary: Sequence[int],
    punctuation: Sequence[int],
    top: int = 10,
) -> dict[str, Tensor]:
    """The readings' arrays from attention patterns (`batches` yields them in the order of `tokens`,
    twice: the distances need the mean rows first). `shape` is (n_layers, n_heads); `boundary` and
    `punctuation` are the ids of boundary and punctuation tokens."""
    device = tokens.device
    distinct, index = _pair_ids(tokens, valid, n_vocab)
    sums = _Sums((*shape, tokens.shape[1]), index, len(distinct), device)
    boundary_ids = torch.tensor(list(boundary), dtype=torch.long, device=device)
    punct_ids = torch.tensor(list(punctuation), dtype=torch.long, device=device)
    for tok, ok, pattern in batches():
        sums.add(pattern.double(), _masks(tok, boundary_ids, punct_ids), _counted(ok), torch.isin(tok, punct_ids))
    mean_rows = sums.mean_rows()
    for _, ok, pattern in batches():
        sums.add_distance(pattern.double(), _counted(ok), mean_rows)
    n = float(_counted(valid).sum().clamp_min(1))
    share, rank = sums.pairs.topk(min(top, len(distinct)), dim=-1)  # [l * h, rank]
    counts = torch.bincount(index, minlength=len(distinct))
    out = {
        "pair_query": distinct[rank] // n_vocab,
        "pair_key": distinct[rank] % n_vocab,
        "pair_share": share / n,
        "pair_count": counts[rank],
        "positional_share": 1 - sums.distance / n,
        "offset_profile": _offset_profile(sums.rows, sums.row_count),
        "punctuation_baseline": sums.baseline / n,
    }
    out = {k: v.reshape(*shape, -1) if k.startswith("pair") else v for k, v in out.items()}
    out |= {f"fraction/{k}": v / n for k, v in sums.mass.items()}
    out |= {f"score/{k}": sums.mass[k] / sums.defined[k].clamp_min(1) for k in SCORED}
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def _offset_profile(rows: Tensor, row_count: Tensor) -> Tensor:
    """[l, h, offset]: the mean attention at each offset over the counted queries that reach it
    (from the summed rows: row q, key q - d)."""
    p = rows.shape[-1]
    sums = torch.stack([rows.diagonal(-d, dim1=-2, dim2=-1).sum(-1) for d in range(p)], -1)
    reach = torch.stack([row_count[d:].sum() for d in range(p)])
    return sums / reach.where(reach > 0, torch.nan)


def head_types(
    fractions: dict[str, Tensor],
    scores: dict[str, Tensor],
    positional_share: Tensor,
    repeated_induction: Tensor,
    punctuation_baseline: float,
) -> list[list[list[str]]]:
    """Every head's types in priority order (`TYPES`), by the thresholds of `THRESHOLDS`."""
    t = THRESHOLDS
    punct_floor = max(t["punctuation"], t["punctuation_over_baseline"] * punctuation_baseline)
    tests = {
        "induction": repeated_induction >= t["induction"],
        "previous-token": scores["previous_token"] >= t["previous-token"],
        "duplicate-token": scores["duplicate_token"] >= t["duplicate-token"],
        "BOS": fractions["bos"] >= t["BOS"],
        "punctuation": fractions["punctuation"] >= punct_floor,
        "positional": positional_share >= t["positional"],
        "content": positional_share < t["content"],
    }
    n_layers, n_heads = positional_share.shape
    return [[[k for k in TYPES if bool(tests[k][layer, head])] for head in range(n_heads)] for layer in range(n_layers)]


DEFINITIONS = {
    "queries": "positions q >= 1 of the examples' inputs (no padding); each pattern row sums to 1",
    "pair_share": "attention summed over the queries holding the query token and the keys holding the "
    "attended token, over the number of queries",
    "fractions": "mean over queries of the attention on the keys a relation marks: "
    + "; ".join(f"{k}: {v}" for k, v in RELATIONS.items()),
    "scores": "as fractions, averaged only over the queries where the relation marks some key",
    "positional_share": "1 - mean over queries of the total-variation distance between the row and the "
    "head's mean row at that query position (1 = attends by position alone)",
    "offset_profile": "mean attention at each offset q - k",
    "punctuation_baseline": "the punctuation fraction of a head that attends uniformly to its keys",
}


def _model_patterns(model: Transformer, tokens: Tensor, valid: Tensor) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
    """(tokens, valid, patterns) in batches of at most PATTERN_BUDGET attention probabilities."""
    p, cfg = tokens.shape[1], model.cfg
    step = max(1, PATTERN_BUDGET // (cfg.n_layers * cfg.n_heads * p * p))
    for idx in torch.arange(len(tokens), device=tokens.device).split(step):
        yield tokens[idx], valid[idx], att.attention_patterns(model, tokens[idx])


@torch.no_grad()
def text_heads(
    model: Transformer,
    tokens: Int[Tensor, "batch pos"],
    valid: Bool[Tensor, "batch pos"],
    *,
    token_labels: Callable[[Tensor], list[str]],
    boundary: Sequence[int],
    repeated_induction: Float[Tensor, "layer head"],
    top: int = 10,
) -> TextHeads:
    """Every reading of the module docstring on `tokens` (`valid`: their input positions, e.g.
    `input_positions(targets)`). `token_labels` names token ids (a task's `token_labels`), which
    also decides which tokens are punctuation; `boundary` lists the boundary token ids."""
    device = next(model.parameters()).device
    tokens, valid = tokens.to(device), valid.to(device)
    seen = tokens[valid].unique()
    punctuation = [int(i) for i, label in zip(seen.tolist(), token_labels(seen.cpu())) if is_punctuation(label)]
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    batches = functools.partial(_model_patterns, model, tokens, valid)
    arrays = read_attention(
        batches, tokens, valid, shape, n_vocab=model.W_E.shape[0], boundary=boundary, punctuation=punctuation, top=top
    )
    arrays = {k: v.cpu() for k, v in arrays.items()}
    fractions = {k.split("/")[1]: v for k, v in arrays.items() if k.startswith("fraction/")}
    scores = {k.split("/")[1]: v for k, v in arrays.items() if k.startswith("score/")}
    baseline = float(arrays["punctuation_baseline"])
    ids = sorted(set(arrays["pair_query"].flatten().tolist()) | set(arrays["pair_key"].flatten().tolist()))
    return TextHeads(
        pair_query=arrays["pair_query"],
        pair_key=arrays["pair_key"],
        pair_share=arrays["pair_share"],
        pair_count=arrays["pair_count"],
        fractions=fractions,
        scores=scores,
        positional_share=arrays["positional_share"],
        offset_profile=arrays["offset_profile"],
        repeated_induction=repeated_induction.cpu().float(),
        punctuation_baseline=baseline,
        types=head_types(fractions, scores, arrays["positional_share"], repeated_induction.cpu(), baseline),
        labels=dict(zip(map(str, ids), token_labels(torch.tensor(ids, dtype=torch.long)))),
        thresholds=dict(THRESHOLDS),
        definitions=DEFINITIONS,
        n_examples=len(tokens),
        n_queries=int(_counted(valid).sum()),
    )
