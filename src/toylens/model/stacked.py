"""The transformer's forward pass for many weight sets at once, without vmap.

    logits = stacked_forward(model, params, tokens)    # params {name: [rows, *shape]}, tokens [rows, m, pos]

Row r runs `model`'s architecture with the weights `params[name][r]` on `tokens[r]`. Every
product is one batched matrix product over rows (bias inside it), and attention is the fused
`scaled_dot_product_attention` over rows x sequences, which `torch.func.vmap` cannot batch on a
CPU (it has no batching rule there, so the vmapped path materialises the pattern). The LLC
sampler uses it to advance all its chains together (`toylens.analysis.llc_run`).

`record` maps hook names to callbacks that receive that activation as [rows, m, pos, ...]; the
hooks it can serve are `STACKED_HOOKS` (the residual stream, attention and MLP outputs, MLP
pre- and post-activations).
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
                    record: dict[str, Callable[[Tensor], None]] | None = None) -> Tensor:
    """Logits [rows, m, pos, d_vocab_out] (see the module docstring)."""
    cfg = model.cfg
    record = record or {}
    unknown = [n for n in record if not STACKED_HOOKS.fullmatch(n)]
    if unknown:
        raise ValueError(f"stacked_forward cannot record {unknown[0]!r}")
    rows, m, pos = tokens.shape
    ln = cfg.normalization == "LN"
    h, e = cfg.n_heads, cfg.d_head
    row = torch.arange(rows, device=tokens.device).view(rows, 1, 1)
    x = params["embed.W_E"][row, tokens] + params["pos_embed.W_pos"][:, None, :pos]
    x = x.reshape(rows, m * pos, cfg.d_model)

    def hook(name: str, act: Tensor) -> Tensor:
        if name in record:
            record[name](act.view(rows, m, pos, -1))
        return act

    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        x = hook(p + "hook_resid_pre", x)
        a = _norm(x, params, p + "ln1") if ln else x
        W = torch.cat([_heads(params[p + f"attn.W_{c}"]) for c in "QKV"], -1)
        b = torch.cat([params[p + f"attn.b_{c}"].flatten(1) for c in "QKV"], -1)
        qkv = _linear(a, W, b).view(rows * m, pos, 3, h, e).permute(2, 0, 3, 1, 4)  # [3, rows*m, h, pos, e]
        z = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        z = z.transpose(1, 2).reshape(rows, m * pos, h * e)
        attn_out = hook(p + "hook_attn_out", _linear(z, params[p + "attn.W_O"].flatten(1, 2), params[p + "attn.b_O"]))
        x = x + attn_out
        if not cfg.attn_only:
            x = hook(p + "hook_resid_mid", x)
            a = _norm(x, params, p + "ln2") if ln else x
            pre = hook(p + "mlp.hook_pre", _linear(a, params[p + "mlp.W_in"], params[p + "mlp.b_in"]))
            post = hook(p + "mlp.hook_post", F.relu(pre) if cfg.act_fn == "relu" else F.gelu(pre))
            x = x + hook(p + "hook_mlp_out", _linear(post, params[p + "mlp.W_out"], params[p + "mlp.b_out"]))
        x = hook(p + "hook_resid_post", x)
    if ln:
        x = _norm(x, params, "ln_final")
    return _linear(x, params["unembed.W_U"], params["unembed.b_U"]).view(rows, m, pos, -1)
