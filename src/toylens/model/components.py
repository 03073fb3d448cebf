"""The transformer's parts: embeddings, LayerNorm, attention, MLP, unembedding, block.

Each module holds its weights and hook points and computes with `toylens.model.functional`, the
arithmetic written once. Parameter names and shapes follow TransformerLens (see
`toylens.config.hooks`), so state dicts map one to one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import cast, overload

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from toylens.config import ModelConfig, derived
from toylens.model import functional as core
from toylens.model.hooks import HookPoint


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(derived(cfg.d_vocab, "d_vocab"), cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return core.embed(self.W_E, tokens)  # index_select: a deterministic backward (see core.embed)


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(derived(cfg.n_ctx, "n_ctx"), cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        batch, pos = tokens.shape
        return core.pos_embed(self.W_pos, pos).unsqueeze(0).expand(batch, pos, -1)


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens's hooks: hook_scale is the std, hook_normalized the output."""

    def __init__(self, cfg: ModelConfig, eps: float = core.EPS):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        return self.hook_normalized(core.layer_norm(x, self.w, self.b, eps=self.eps, hook_scale=self.hook_scale))


class Attention(nn.Module):
    """Causal multi-head attention.

    Uses `scaled_dot_product_attention` unless something needs the scores or pattern (a hook on
    `hook_attn_scores`/`hook_pattern`, or `explicit = True`); both paths give the same output.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, derived(cfg.d_head, "d_head")
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.explicit = False
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.hook_result = HookPoint()

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"] | tuple[Tensor, Tensor, Tensor],
        past: tuple[Tensor, Tensor] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Attention output for the positions of `x`. With `past` (keys and values
        [batch, p0, n_heads, d_head] of the p0 positions before them), `x` holds positions p0..
        and attends to those too; hook_q/k/v see only the new positions.

        `x` is the (normalised) residual stream, or split inputs: a tuple of every head's own
        query, key and value input, each [batch, pos, n_heads, d_model] (see TransformerBlock)."""
        if isinstance(x, tuple):
            q = self.hook_q(core.project_split(x[0], self.W_Q, self.b_Q))
            k = self.hook_k(core.project_split(x[1], self.W_K, self.b_K))
            v = self.hook_v(core.project_split(x[2], self.W_V, self.b_V))
        else:
            q = self.hook_q(core.project(x, self.W_Q, self.b_Q))
            k = self.hook_k(core.project(x, self.W_K, self.b_K))
            v = self.hook_v(core.project(x, self.W_V, self.b_V))
        explicit = self.explicit or self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks
        z = self.hook_z(
            core.attention(
                q, k, v, past=past, explicit=explicit, hook_scores=self.hook_attn_scores, hook_pattern=self.hook_pattern
            )
        )
        if self.hook_result.has_hooks:
            return self.hook_result(core.head_results(z, self.W_O)).sum(-2) + self.b_O
        return core.attn_output(z, self.W_O, self.b_O)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_mlp = derived(cfg.d_mlp, "d_mlp")
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, d_mlp))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act_fn = cfg.act_fn
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(core.linear(x, self.W_in, self.b_in))
        post = self.hook_post(core.activation(pre, self.act_fn))
        return core.linear(post, self.W_out, self.b_out)


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_vocab_out = derived(cfg.d_vocab_out, "d_vocab_out")
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, d_vocab_out))
        self.b_U = nn.Parameter(torch.zeros(d_vocab_out))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab_out"]:
        # The bias inside the product: one pass fewer over the logits, which dominate a step with
        # a 50,257-token vocabulary.
        return core.unembed(x, self.W_U, self.b_U)


class TransformerBlock(nn.Module):
    """resid_pre -> (+ attn) resid_mid -> (+ mlp) resid_post, pre-LN when normalization is LN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ln = cfg.normalization == "LN"
        self.attn_only = cfg.attn_only
        self.split_qkv_input = False  # see _attention_input
        # Registered in forward order, so hook_dict (and every cache) lists names in that order.
        self.hook_resid_pre = HookPoint()
        self.hook_q_input = HookPoint()
        self.hook_k_input = HookPoint()
        self.hook_v_input = HookPoint()
        self.ln1: LayerNorm | nn.Identity = LayerNorm(cfg) if ln else nn.Identity()
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()
        if not cfg.attn_only:
            self.hook_resid_mid = HookPoint()
            self.hook_mlp_in = HookPoint()
            self.ln2: LayerNorm | nn.Identity = LayerNorm(cfg) if ln else nn.Identity()
            self.mlp = MLP(cfg)
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        past: tuple[Tensor, Tensor] | None = None,
        *,
        after_attention: bool = False,
    ) -> Float[Tensor, "batch pos d_model"]:
        """`past`: the keys and values of earlier positions, as in `Attention.forward`.
        `after_attention`: `resid` already holds this block's attention output (it is the
        block's resid_mid, or resid_pre + attn_out without MLPs), so only the MLP half runs."""
        if not after_attention:
            resid = self.hook_resid_pre(resid)
            resid = resid + self.hook_attn_out(self.attn(self._attention_input(resid), past))
        if not self.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(resid))))
        return self.hook_resid_post(resid)

    def _attention_input(self, resid: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """ln1(resid); or, with `split_qkv_input` (TransformerLens's use_split_qkv_input), split
        inputs: each head's query, key and value reads a copy of resid of its own,
        [batch, pos, n_heads, d_model], through hook_q_input / hook_k_input / hook_v_input and
        ln1, so one head's one input can be patched or differentiated alone. Same output, n_heads
        times the LayerNorm and projection work; ln1's hooks then see [batch, pos, n_heads, ...]."""
        if not self.split_qkv_input:
            return self.ln1(resid)
        shape = (*resid.shape[:-1], self.attn.W_Q.shape[0], resid.shape[-1])
        split = (self.hook_q_input, self.hook_k_input, self.hook_v_input)
        q, k, v = (self.ln1(hook(resid.unsqueeze(-2).expand(shape))) for hook in split)  # a copy each
        return q, k, v


class Blocks(nn.ModuleList):
    """`blocks`: an nn.ModuleList of TransformerBlocks (the same modules and state-dict keys)
    that says so to a type checker, so that `model.blocks[l].attn.W_O` is checked."""

    def __init__(self, blocks: Iterable[TransformerBlock]) -> None:
        super().__init__(blocks)

    @overload
    def __getitem__(self, idx: slice) -> Blocks: ...

    @overload
    def __getitem__(self, idx: int) -> TransformerBlock: ...

    def __getitem__(self, idx: int | slice) -> TransformerBlock | Blocks:
        return cast("TransformerBlock | Blocks", super().__getitem__(idx))

    def __iter__(self) -> Iterator[TransformerBlock]:
        return cast(Iterator[TransformerBlock], super().__iter__())
