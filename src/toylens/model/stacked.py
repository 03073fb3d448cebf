"""The transformer's forward pass for many weight sets at once, without vmap.

    logits = stacked_forward(model, params, tokens)    # params {name: [rows, *shape]}, tokens [rows, m, pos]

Row r runs `model`'s architecture with the weights `params[name][r]` on `tokens[r]`, through the
same functions as the model itself (`toylens.model.functional`, given weights with a leading
rows axis). Every product is one batched matrix product over rows (bias inside it), and
attention is the fused `scaled_dot_product_attention` over rows x sequences, which
`torch.func.vmap` cannot batch on a CPU (it has no batching rule there, so the vmapped path
materialises the pattern). The LLC sampler uses it to advance all its chains together
(`toylens.llc.objective`).

`record` maps hook names to callbacks that receive that activation as [rows, m, pos, ...]; the
hooks it can serve are `STACKED_HOOKS` (the residual stream, attention and MLP outputs, MLP
pre- and post-activations). `positions` limits the logits to some sequence positions, and the last
layer to what those logits need (see `stacked_forward`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from toylens.config import ModelConfig
from toylens.model import functional as core
from toylens.model.transformer import Transformer

STACKED_HOOKS = re.compile(
    r"blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|"
    r"hook_mlp_out|mlp\.hook_pre|mlp\.hook_post)"
)


def stacked_forward(
    model: Transformer,
    params: dict[str, Tensor],
    tokens: Tensor,
    record: dict[str, Callable[[Tensor], None]] | None = None,
    positions: Tensor | None = None,
) -> Tensor:
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
    run = _Pass(cfg, params, record, rows, m, pos, positions, n=pos, n_out=pos if positions is None else len(positions))
    x = core.embed(params["embed.W_E"], tokens) + core.pos_embed(params["pos_embed.W_pos"], pos)[:, None]
    x = x.reshape(rows, m * pos, cfg.d_model)
    last = f"blocks.{cfg.n_layers - 1}."
    cut = 3 if positions is None else _cut(cfg.attn_only, [n[len(last) :] for n in record if n.startswith(last)])
    for layer in range(cfg.n_layers):
        x = run.block(layer, x, cut if layer == cfg.n_layers - 1 else 3)
    if run.n != run.n_out:
        x, run.n = run.keep(x), run.n_out
    return core.unembed(run.norm(x, "ln_final"), params["unembed.W_U"], params["unembed.b_U"]).view(rows, m, run.n, -1)


@dataclass
class _Pass:
    """One stacked forward: its sizes, the hooks it records, and the positions it narrows to."""

    cfg: ModelConfig
    params: dict[str, Tensor]
    record: dict[str, Callable[[Tensor], None]]
    rows: int
    m: int
    pos: int
    positions: Tensor | None
    n: int
    """Positions the residual stream currently holds per sequence (pos, or n_out once narrowed)."""
    n_out: int
    """Positions the logits are at."""

    def hook(self, name: str, act: Tensor) -> Tensor:
        if name in self.record:
            self.record[name](act.view(self.rows, self.m, self.n, -1))
        return act

    def keep(self, t: Tensor) -> Tensor:
        """t [rows, m * pos, d] at `positions` only."""
        return t.view(self.rows, self.m, self.pos, -1)[:, :, self.positions].reshape(self.rows, self.m * self.n_out, -1)

    def norm(self, x: Tensor, name: str) -> Tensor:
        if self.cfg.normalization != "LN":
            return x
        return core.layer_norm(x, self.params[f"{name}.w"], self.params[f"{name}.b"])

    def block(self, layer: int, x: Tensor, at: int) -> Tensor:
        """Block `layer` on the residual stream x [rows, m * n, d_model]; it narrows to `positions`
        at `at` (0 at the queries, 1 before the MLP, 2 before its output projection, 3 not at all)."""
        p, params = f"blocks.{layer}.", self.params
        x = self.hook(p + "hook_resid_pre", x)
        a = self.norm(x, p + "ln1")
        z = _attention(
            params, p + "attn.", a, (self.rows * self.m, self.pos), self.positions if at == 0 else None, self.keep
        )
        if at == 0:  # the queries were at `positions` only
            x, self.n = self.keep(x), self.n_out
        z = z.reshape(self.rows, self.m * self.n, *z.shape[-2:])
        x = x + self.hook(p + "hook_attn_out", core.attn_output(z, params[p + "attn.W_O"], params[p + "attn.b_O"]))
        if not self.cfg.attn_only:
            x = self.hook(p + "hook_resid_mid", x)
            if at == 1:
                x, self.n = self.keep(x), self.n_out
            pre = core.linear(self.norm(x, p + "ln2"), params[p + "mlp.W_in"], params[p + "mlp.b_in"])
            post = self.hook(p + "mlp.hook_post", core.activation(self.hook(p + "mlp.hook_pre", pre), self.cfg.act_fn))
            if at == 2:
                x, post, self.n = self.keep(x), self.keep(post), self.n_out
            x = x + self.hook(p + "hook_mlp_out", core.linear(post, params[p + "mlp.W_out"], params[p + "mlp.b_out"]))
        return self.hook(p + "hook_resid_post", x)


def _attention(
    params: dict[str, Tensor],
    p: str,
    a: Tensor,
    seqs: tuple[int, int],
    positions: Tensor | None,
    keep: Callable[[Tensor], Tensor],
) -> Tensor:
    """z [rows * m, n, n_heads, d_head] of one attention layer, for `a` [rows, m * pos, d_model]
    (`seqs` = (rows * m, pos)); with `positions`, the queries only at those positions (n of them).

    The queries, keys and values come out of one product, their weights concatenated along the
    head axis, and attention is one fused kernel over rows x sequences."""
    which = "KV" if positions is not None else "QKV"
    W = torch.cat([params[p + f"W_{c}"] for c in which], -3)  # [rows, len(which) * n_heads, d_model, d_head]
    b = torch.cat([params[p + f"b_{c}"] for c in which], -2)
    h, e = params[p + "W_Q"].shape[-3], params[p + "W_Q"].shape[-1]
    proj = core.project(a, W, b).view(*seqs, len(which), h, e)
    if positions is None:
        return core.attention(proj[:, :, 0], proj[:, :, 1], proj[:, :, 2])
    q = core.project(keep(a), params[p + "W_Q"], params[p + "b_Q"]).view(seqs[0], len(positions), h, e)
    return core.attention(q, proj[:, :, 0], proj[:, :, 1], q_pos=positions)


def _cut(attn_only: bool, recorded: list[str]) -> int:
    """Where the last layer can narrow to the logits' positions, given the hooks recorded in it:
    0 at the queries, 1 before the MLP, 2 before its output projection, 3 after the layer."""
    if attn_only:
        return 3 if {"hook_attn_out", "hook_resid_post"} & set(recorded) else 0
    needs = {
        "hook_attn_out": 1,
        "hook_resid_mid": 1,
        "mlp.hook_pre": 2,
        "mlp.hook_post": 2,
        "hook_mlp_out": 3,
        "hook_resid_post": 3,
    }
    return max((needs.get(r, 0) for r in recorded), default=0)
