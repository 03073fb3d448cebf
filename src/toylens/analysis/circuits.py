"""Circuits from the weights alone: full QK and OV circuits and the OV copying score.

For head (l, h), with W_E the token embedding, W_pos the positional embedding and W_U the
unembedding:

    full QK over tokens     W_E  @ W_Q W_K^T @ W_E^T    [d_vocab, d_vocab]   query token x key token
    full QK over positions  W_pos @ W_Q W_K^T @ W_pos^T [n_ctx, n_ctx]       query pos x key pos
    full OV                 W_E  @ W_V W_O  @ W_U       [d_vocab, d_vocab_out] attended token -> logits

All are `FactoredMatrix`es with inner dimension d_head: nothing d_vocab x d_vocab is built unless
`.AB` is called (the saved heatmaps are corners of at most `max_tokens` tokens).

The copying score of a head is sum(eigenvalues) / sum(|eigenvalues|) of its full OV circuit
restricted to the tokens that are both inputs and outputs (a square matrix): near 1 when attending
to a token raises that same token's logit, as an induction or copying head does.

With LayerNorm, each weight that reads the residual stream is folded with the LayerNorm before
it: centring (C = I - 11^T/d_model) and the gain w, i.e. W_Q -> C diag(ln1.w) W_Q and
W_U -> C diag(ln_final.w) W_U. The input-dependent scale is left out, as the field does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from toylens.config import derived
from toylens.model import FactoredMatrix, Transformer
from toylens.model.components import LayerNorm
from toylens.rundir.results import Result


def _fold(model: Transformer, W: Tensor, ln_weight: Tensor | None) -> Tensor:
    """C diag(w) W for a weight [..., d_model, n] that reads the residual stream after a LayerNorm."""
    if model.cfg.normalization != "LN" or ln_weight is None:
        return W
    W = W * ln_weight[..., :, None]
    return W - W.mean(-2, keepdim=True)  # C @ W: centring the input = removing the mean over d_model


def folded_weights(model: Transformer) -> dict[str, Tensor]:
    """W_Q, W_K, W_V [l, h, d_model, d_head], W_O, W_E, W_pos and W_U, LayerNorm gains and centring
    folded into the matrices that read the residual stream (unchanged without LayerNorm)."""
    ln = model.cfg.normalization == "LN"
    # With LN every block's ln1 is a LayerNorm (the isinstance only tells the type checker so).
    gains = torch.stack([b.ln1.w for b in model.blocks if isinstance(b.ln1, LayerNorm)])[:, None] if ln else None
    ln_final = model.ln_final.w if isinstance(model.ln_final, LayerNorm) else None  # LayerNorm exactly when ln
    with torch.no_grad():
        return {
            "W_Q": _fold(model, model.W_Q, gains),
            "W_K": _fold(model, model.W_K, gains),
            "W_V": _fold(model, model.W_V, gains),
            "W_O": model.W_O.detach().clone(),
            "W_E": model.W_E.detach().clone(),
            "W_pos": model.W_pos.detach().clone(),
            "W_U": _fold(model, model.W_U.detach(), ln_final),
        }


def qk_circuit(w: dict[str, Tensor]) -> FactoredMatrix:
    return FactoredMatrix(w["W_Q"], w["W_K"].mT)


def ov_circuit(w: dict[str, Tensor]) -> FactoredMatrix:
    return FactoredMatrix(w["W_V"], w["W_O"])


def full_qk_tokens(model: Transformer) -> FactoredMatrix:
    """[n_layers, n_heads, d_vocab (query), d_vocab (key)]."""
    w = folded_weights(model)
    return w["W_E"] @ qk_circuit(w) @ w["W_E"].T


def full_qk_positions(model: Transformer) -> FactoredMatrix:
    """[n_layers, n_heads, n_ctx (query), n_ctx (key)]."""
    w = folded_weights(model)
    return w["W_pos"] @ qk_circuit(w) @ w["W_pos"].T


def full_ov(model: Transformer) -> FactoredMatrix:
    """[n_layers, n_heads, d_vocab (attended token), d_vocab_out (logit)]."""
    w = folded_weights(model)
    return w["W_E"] @ ov_circuit(w) @ w["W_U"]


def copying_scores(model: Transformer, tokens: Tensor | None = None) -> Float[Tensor, "layer head"]:
    """sum(eig) / sum(|eig|) of each head's full OV circuit on `tokens` (input ids whose output
    ids are 0..len-1; default the first d_vocab_out input ids)."""
    tokens = torch.arange(derived(model.cfg.d_vocab_out, "d_vocab_out")) if tokens is None else tokens
    ov = full_ov(model).rows(tokens.to(model.W_E.device)).cols(slice(0, len(tokens)))
    eig = ov.eigenvalues
    return (eig.sum(-1).real / eig.abs().sum(-1).clamp_min(1e-30)).float()


@dataclass
class Circuits(Result):
    """Heatmaps of the full circuits (corners of at most max_tokens tokens) and copying scores."""

    qk_tokens: Tensor
    qk_positions: Tensor
    ov_tokens: Tensor
    copying: Tensor
    token_ids: list[int]
    token_labels: list[str]
    out_labels: list[str]
    folded_ln: bool
    axes = {
        "qk_tokens": ("layer", "head", "query_token", "key_token"),
        "qk_positions": ("layer", "head", "query_pos", "key_pos"),
        "ov_tokens": ("layer", "head", "attended_token", "output_token"),
        "copying": ("layer", "head"),
    }


@torch.no_grad()
def circuits(
    model: Transformer,
    token_labels: list[str],
    out_labels: list[str],
    copy_tokens: Tensor | None = None,
    max_tokens: int = 128,
    max_pos: int = 128,
) -> Circuits:
    """The full QK/OV heatmaps for the first `max_tokens` tokens and positions, and copying scores.

    `token_labels`/`out_labels` name every input/output id; `copy_tokens` as in `copying_scores`
    (an empty tensor skips them, e.g. for classification, where outputs are not tokens).
    """
    cfg = model.cfg
    ids = torch.arange(min(derived(cfg.d_vocab, "d_vocab"), max_tokens), device=model.W_E.device)
    out = slice(0, min(derived(cfg.d_vocab_out, "d_vocab_out"), max_tokens))
    pos = slice(0, min(derived(cfg.n_ctx, "n_ctx"), max_pos))
    copy = (
        torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
        if copy_tokens is not None and len(copy_tokens) == 0
        else copying_scores(model, copy_tokens)
    )
    return Circuits(
        qk_tokens=full_qk_tokens(model).rows(ids).cols(ids).AB.cpu(),
        qk_positions=full_qk_positions(model).rows(pos).cols(pos).AB.cpu(),
        ov_tokens=full_ov(model).rows(ids).cols(out).AB.cpu(),
        copying=copy.cpu(),
        token_ids=ids.tolist(),
        token_labels=[token_labels[i] for i in ids.tolist()],
        out_labels=out_labels[out],
        folded_ln=model.cfg.normalization == "LN",
    )
