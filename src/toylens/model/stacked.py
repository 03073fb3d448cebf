"""The transformer's forward pass for many weight sets at once, without vmap.

    logits = stacked_forward(model, params, tokens)    # params {name: [rows, *shape]}, tokens [rows, m, pos]

Row r runs `model`'s architecture with the weights `params[name][r]` on `tokens[r]`. Every
product is one batched matrix product over rows (bias inside it), and attention is the fused
`scaled_dot_product_attention` over rows x sequences, which `torch.func.vmap` cannot batch on a
CPU (it has no batching rule there, so the vmapped path materialises the pattern). The LLC
sampler uses it to advance all its chains together (`toylens.analysis.llc_run`).

`record` maps hook names to callbacks that receive that activation as [rows, m, pos, ...]; the
hooks it can serve are `STACKED_HOOKS` (the residual stream, attention and MLP outputs, MLP
pre- and post-activations). `positions` limits the logits to some sequence positions, and the last
layer to what those logits need (see `stacked_forward`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from toylens.model.transformer import Transformer

STACKED_HOOKS = re.compile(r"blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|"
                           r"hook_mlp_out|mlp\.hook_pre|mlp\.hook_post)")


def _linear(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """x [rows, n, i] @ W [rows, i, o] + b [rows, o], one batched product."""
    return torch.baddbmm(b.unsqueeze(1), x, W)


def _norm(x: Tensor, params: dict[str, Tensor], name: str, eps: float = 1e-5) -> Tensor:
    """LayerNorm with per-row gain and bias (as `components.LayerNorm`)."""
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x / scale * params[f"{name}.w"].unsqueeze(1) + params[f"{name}.b"].unsqueeze(1)


def _heads(W: Tensor) -> Tensor:
    """[rows, n_heads, d_model, d_head] -> [rows, d_model, n_heads * d_head]."""
    r, h, d, e = W.shape
    return W.permute(0, 2, 1, 3).reshape(r, d, h * e)


def stacked_forward(model: Transformer, params: dict[str, Tensor], tokens: Tensor,
                    record: dict[str, Callable[[Tensor], None]] | None = None,
                    positions: Tensor | None = None) -> Tensor:
    """Logits [rows, m, pos, d_vocab_out] (see the module docstring).

    With `positions` (sorted sequence positions), only those positions' logits [rows, m,
    len(positions), d_vocab_out] are computed: the last layer's work that feeds nothing but the
    logits (queries and attention, the MLP, its output projection, as far as no recorded hook of
    that layer needs every position) and the unembedding run at those positions only; the keys
    and values still come from every earlier position. A task whose loss is taken at a few
    positions (sorting) so saves part of the last layer.
    """
    cfg = model.cfg
    record = record or {}
    unknown = [n for n in record if not STACKED_HOOKS.fullmatch(n)]
    if unknown:
        raise ValueError(f"stacked_forward cannot record {unknown[0]!r}")
    rows, m, pos = tokens.shape
    ln = cfg.normalization == "LN"
    h, e = cfg.n_heads, cfg.d_head
    W_E = params["embed.W_E"]  # [rows, d_vocab, d_model]; flat ids keep the backward deterministic (see Embed)
    ids = (torch.arange(rows, device=tokens.device).view(rows, 1, 1) * W_E.shape[1] + tokens).reshape(-1)
    x = W_E.reshape(-1, cfg.d_model).index_select(0, ids).view(rows, m, pos, -1) + params["pos_embed.W_pos"][:, None, :pos]
    x = x.reshape(rows, m * pos, cfg.d_model)
    n = pos  # positions x currently holds per sequence

    def hook(name: str, act: Tensor) -> Tensor:
        if name in record:
            record[name](act.view(rows, m, n, -1))
        return act

    def keep(t: Tensor) -> Tensor:
        """t [rows, m * pos, d] at `positions` only."""
        return t.view(rows, m, pos, -1)[:, :, positions].reshape(rows, m * len(positions), -1)

    last = f"blocks.{cfg.n_layers - 1}."
    cut = 3 if positions is None else _cut(cfg.attn_only, [name[len(last):] for name in record if name.startswith(last)])
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        at = cut if layer == cfg.n_layers - 1 else 3  # where this layer narrows to `positions`
        x = hook(p + "hook_resid_pre", x)
        a = _norm(x, params, p + "ln1") if ln else x
        which = "KV" if at == 0 else "QKV"  # at 0 the queries are computed at `positions` only
        W = torch.cat([_heads(params[p + f"attn.W_{c}"]) for c in which], -1)
        b = torch.cat([params[p + f"attn.b_{c}"].flatten(1) for c in which], -1)
        proj = _linear(a, W, b).view(rows * m, pos, len(which), h, e).permute(2, 0, 3, 1, 4)  # [., rows*m, h, pos, e]
        if at == 0:
            q = _linear(keep(a), _heads(params[p + "attn.W_Q"]), params[p + "attn.b_Q"].flatten(1))
            q = q.view(rows * m, len(positions), h, e).transpose(1, 2)
            mask = positions.view(-1, 1) >= torch.arange(pos, device=positions.device)
            z = F.scaled_dot_product_attention(q, proj[0], proj[1], attn_mask=mask)
            x, n = keep(x), len(positions)
        else:
            z = F.scaled_dot_product_attention(proj[0], proj[1], proj[2], is_causal=True)
        z = z.transpose(1, 2).reshape(rows, m * n, h * e)
        attn_out = hook(p + "hook_attn_out", _linear(z, params[p + "attn.W_O"].flatten(1, 2), params[p + "attn.b_O"]))
        x = x + attn_out
        if not cfg.attn_only:
            x = hook(p + "hook_resid_mid", x)
            if at == 1:
                x, n = keep(x), len(positions)
            a = _norm(x, params, p + "ln2") if ln else x
            pre = hook(p + "mlp.hook_pre", _linear(a, params[p + "mlp.W_in"], params[p + "mlp.b_in"]))
            post = hook(p + "mlp.hook_post", F.relu(pre) if cfg.act_fn == "relu" else F.gelu(pre))
            if at == 2:
                x, post, n = keep(x), keep(post), len(positions)
            x = x + hook(p + "hook_mlp_out", _linear(post, params[p + "mlp.W_out"], params[p + "mlp.b_out"]))
        x = hook(p + "hook_resid_post", x)
    if n != (pos if positions is None else len(positions)):
        x, n = keep(x), len(positions)
    if ln:
        x = _norm(x, params, "ln_final")
    return _linear(x, params["unembed.W_U"], params["unembed.b_U"]).view(rows, m, n, -1)


def _cut(attn_only: bool, recorded: list[str]) -> int:
    """Where the last layer can narrow to the logits' positions, given the hooks recorded in it:
    0 at the queries, 1 before the MLP, 2 before its output projection, 3 after the layer."""
    if attn_only:
        return 3 if {"hook_attn_out", "hook_resid_post"} & set(recorded) else 0
    needs = {"hook_attn_out": 1, "hook_resid_mid": 1, "mlp.hook_pre": 2, "mlp.hook_post": 2,
             "hook_mlp_out": 3, "hook_resid_post": 3}
    return max((needs.get(r, 0) for r in recorded), default=0)
