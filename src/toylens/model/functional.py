"""The transformer's arithmetic, written once, as functions over weights.

Everything that computes part of the forward pass calls these: the hooked modules of
`toylens.model.components` (which put their hook points between the calls), the many-models
forward of `toylens.model.stacked` (the LLC sampler's), and through `Transformer.forward` the
patching and ablation engines. A new normalisation or activation is one edit here; a test
(tests/model/test_functional_core.py) checks that no other file in `src/` computes a LayerNorm, the
activation, the attention softmax or the unembedding itself.

Weights come as the modules hold them (the names and shapes of `toylens.config.hooks`), or with a
leading rows axis, one weight set per row ([rows, *shape], and `x` then [rows, n, ...]): each
product is then one batched product over the rows. Biases are added inside the products (addmm,
baddbmm), one pass fewer over the output. One block, pre-LN:

    a = layer_norm(x, ln1_w, ln1_b)
    z = attention(project(a, W_Q, b_Q), project(a, W_K, b_K), project(a, W_V, b_V))
    x = x + attn_output(z, W_O, b_O)
    x = x + linear(activation(linear(layer_norm(x, ln2_w, ln2_b), W_in, b_in), "gelu"), W_out, b_out)

and around the blocks `embed(W_E, tokens) + pos_embed(W_pos, n_pos)` before and
`unembed(layer_norm(x, w, b), W_U, b_U)` after.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

EPS = 1e-5  # LayerNorm's epsilon, as in TransformerLens
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": torch.relu, "gelu": F.gelu}  # gelu: exact (erf)


def _same(x: Tensor) -> Tensor:
    return x


def embed(
    W_E: Float[Tensor, "*rows d_vocab d_model"], tokens: Int[Tensor, "*batch"]
) -> Float[Tensor, "*batch d_model"]:
    """The rows of W_E at `tokens`. With a rows axis (W_E [rows, d_vocab, d_model]), tokens
    [rows, ...] and row r looks its tokens up in W_E[r]."""
    if W_E.dim() == 3:  # flat (row, token) ids into all rows' tables at once
        rows, d_vocab = W_E.shape[:2]
        offsets = torch.arange(rows, device=tokens.device).view(rows, *[1] * (tokens.dim() - 1)) * d_vocab
        W_E, tokens = W_E.flatten(0, 1), tokens + offsets
    # index_select, not W_E[tokens]: the backward of advanced indexing adds repeated tokens'
    # gradients with atomic adds across CPU threads, in an order that changes from run to run;
    # index_select's backward (index_add_) adds them in token order, on every thread count.
    return W_E.index_select(0, tokens.reshape(-1)).view(*tokens.shape, W_E.shape[-1])


def pos_embed(W_pos: Float[Tensor, "*rows n_ctx d_model"], n_pos: int) -> Float[Tensor, "*rows n_pos d_model"]:
    """The embeddings of positions 0..n_pos-1 (a view)."""
    return W_pos[..., :n_pos, :]


def _per_row(t: Tensor, x: Tensor) -> Tensor:
    """A per-feature weight t [*rows, k] viewed to broadcast against x [*rows, ..., k]."""
    return t.view(*t.shape[:-1], *[1] * (x.dim() - t.dim()), t.shape[-1])


def layer_norm(
    x: Float[Tensor, "... d_model"],
    w: Float[Tensor, "*rows d_model"],
    b: Float[Tensor, "*rows d_model"] | None = None,
    *,
    scale: Float[Tensor, "... 1"] | None = None,
    eps: float = EPS,
    hook_scale: Callable[[Tensor], Tensor] = _same,
) -> Float[Tensor, "... d_model"]:
    """LayerNorm over d_model: centre x, divide by its standard deviation (which `hook_scale`
    sees, [..., 1]), multiply by the gain w and add the bias b (none when b is None).

    With `scale` given (one cached from a forward pass) it is linear in x: the field's way of
    putting parts of the residual stream through a norm so that they still add up.
    """
    x = x - x.mean(-1, keepdim=True)
    if scale is None:
        scale = hook_scale((x.pow(2).mean(-1, keepdim=True) + eps).sqrt())
    x = x / scale * _per_row(w, x)
    return x if b is None else x + _per_row(b, x)


def activation(x: Tensor, act_fn: str) -> Tensor:
    """The MLP's nonlinearity, by its config name (`ModelConfig.act_fn`): relu or gelu."""
    return ACTIVATIONS[act_fn](x)


def linear(
    x: Float[Tensor, "... d_in"], W: Float[Tensor, "*rows d_in d_out"], b: Float[Tensor, "*rows d_out"]
) -> Float[Tensor, "... d_out"]:
    """x @ W + b, the bias inside the product (addmm; baddbmm over rows when W has a rows axis)."""
    if W.dim() == 2:
        out = torch.addmm(b, x.flatten(0, -2), W)
    else:
        out = torch.baddbmm(b.unsqueeze(1), x.flatten(1, -2), W)
    return out.view(*x.shape[:-1], W.shape[-1])


def project(
    x: Float[Tensor, "... d_model"],
    W: Float[Tensor, "*rows n_heads d_model d_head"],
    b: Float[Tensor, "*rows n_heads d_head"],
) -> Float[Tensor, "... n_heads d_head"]:
    """x @ W[h] + b[h] for every head h, as one matrix product: queries, keys or values.

    An einsum over heads runs a slower batched product per head (measured: 1.3 s of a 2.7 s
    patching grid). Weights concatenated along the head axis (W_Q, W_K, W_V: 3 * n_heads "heads")
    come out of one product too.
    """
    h, d, e = W.shape[-3:]
    W = W.transpose(-3, -2).reshape(*W.shape[:-3], d, h * e)  # [*rows, d_model, n_heads * d_head]
    return linear(x, W, b.flatten(-2)).view(*x.shape[:-1], h, e)


def project_split(
    x: Float[Tensor, "... n_heads d_model"],
    W: Float[Tensor, "n_heads d_model d_head"],
    b: Float[Tensor, "n_heads d_head"],
) -> Float[Tensor, "... n_heads d_head"]:
    """x[h] @ W[h] + b[h] for every head h, each head from its own input (split inputs: one
    head's query, key or value input can then be patched or differentiated alone)."""
    return torch.einsum("...hd,hde->...he", x, W) + b


def attention(
    q: Float[Tensor, "batch n_q n_heads d_head"],
    k: Float[Tensor, "batch n_k n_heads d_head"],
    v: Float[Tensor, "batch n_k n_heads d_head"],
    *,
    past: tuple[Tensor, Tensor] | None = None,
    q_pos: Int[Tensor, " n_q"] | None = None,
    explicit: bool = False,
    hook_scores: Callable[[Tensor], Tensor] = _same,
    hook_pattern: Callable[[Tensor], Tensor] = _same,
) -> Float[Tensor, "batch n_q n_heads d_head"]:
    """Causal attention: z, each query's pattern-weighted values.

    Key j sits at position j; query i at position q_pos[i] (default: the last n_q of the n_k
    positions, so all of them when n_q = n_k), and it attends to the keys at its position and
    before. `past` holds the keys and values [batch, p0, n_heads, d_head] of p0 positions before
    k and v, which then hold positions p0.. . Runs the fused `scaled_dot_product_attention`
    unless `explicit`: then the scores and the pattern [batch, n_heads, n_q, n_k] are
    materialised and pass through `hook_scores` and `hook_pattern`. Both paths give the same z.
    """
    if past is not None:
        k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
    if explicit:
        return _explicit_attention(q, k, v, q_pos, hook_scores, hook_pattern)
    n_q, n_k = q.shape[1], k.shape[1]
    mask = None if q_pos is None and n_q == n_k else allowed_keys(n_q, n_k, q_pos, q.device)
    z = F.scaled_dot_product_attention(  # [b, p, h, e] -> [b, h, p, e] for the kernel, and back
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=mask is None
    )
    return z.transpose(1, 2)


def _explicit_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor | None,
    hook_scores: Callable[[Tensor], Tensor],
    hook_pattern: Callable[[Tensor], Tensor],
) -> Tensor:
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * (1.0 / math.sqrt(q.shape[-1]))
    allowed = allowed_keys(q.shape[1], k.shape[1], q_pos, q.device)
    scores = hook_scores(scores.masked_fill(~allowed, float("-inf")))
    pattern = hook_pattern(scores.softmax(-1))
    return torch.einsum("bhqk,bkhe->bqhe", pattern, v)


def allowed_keys(n_q: int, n_k: int, q_pos: Tensor | None, device: torch.device) -> Bool[Tensor, "n_q n_k"]:
    """True where a query may attend to a key: the key's position is at most the query's."""
    if q_pos is None:
        q_pos = torch.arange(n_k - n_q, n_k, device=device)
    return q_pos.view(-1, 1) >= torch.arange(n_k, device=device)


def attn_output(
    z: Float[Tensor, "... n_heads d_head"],
    W_O: Float[Tensor, "*rows n_heads d_head d_model"],
    b_O: Float[Tensor, "*rows d_model"],
) -> Float[Tensor, "... d_model"]:
    """The attention layer's output: every head's z @ W_O[h] summed, plus b_O, as one product."""
    return linear(z.flatten(-2), W_O.flatten(-3, -2), b_O)


def head_results(
    z: Float[Tensor, "... n_heads d_head"], W_O: Float[Tensor, "n_heads d_head d_model"]
) -> Float[Tensor, "... n_heads d_model"]:
    """Each head's output z[h] @ W_O[h], not summed (hook_result; a patched head's change)."""
    return torch.einsum("...he,hed->...hd", z, W_O)


def unembed(
    x: Float[Tensor, "... d_model"],
    W_U: Float[Tensor, "*rows d_model d_vocab_out"],
    b_U: Float[Tensor, "*rows d_vocab_out"],
) -> Float[Tensor, "... d_vocab_out"]:
    """Logits x @ W_U + b_U, at the positions `x` holds (select positions first to unembed fewer)."""
    return linear(x, W_U, b_U)
