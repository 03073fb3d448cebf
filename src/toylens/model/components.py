"""The transformer's parts: embeddings, LayerNorm, attention, MLP, unembedding, block.

Parameter names and shapes follow TransformerLens (see `toylens.model.names`), so state dicts
map one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from toylens.config import ModelConfig
from toylens.model.hooks import HookPoint


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        # index_select, not W_E[tokens]: the backward of advanced indexing adds repeated tokens'
        # gradients with atomic adds across CPU threads, in an order that changes from run to
        # run; index_select's backward (index_add_) adds them in token order, on every thread count.
        return self.W_E.index_select(0, tokens.reshape(-1)).view(*tokens.shape, -1)


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        batch, pos = tokens.shape
        return self.W_pos[:pos].unsqueeze(0).expand(batch, pos, -1)


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens's hooks: hook_scale is the std, hook_normalized the output."""

    def __init__(self, cfg: ModelConfig, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w + self.b)


def _per_head(x: Float[Tensor, "batch pos d_model"], W: Float[Tensor, "n_heads d_model d_head"],
              b: Float[Tensor, "n_heads d_head"]) -> Float[Tensor, "batch pos n_heads d_head"]:
    """x @ W[h] + b[h] for every head h as one matrix product (an einsum over heads runs a slower
    batched product per head: measured 1.3 s of a 2.7 s patching grid)."""
    h, d, e = W.shape
    out = torch.addmm(b.reshape(h * e), x.reshape(-1, d), W.permute(1, 0, 2).reshape(d, h * e))
    return out.view(*x.shape[:-1], h, e)


def _causal(n_q: int, n_k: int, device: torch.device) -> Tensor:
    """True where query i (the last n_q of n_k positions) must not attend to key j: j > i."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).triu(1 + n_k - n_q)


class Attention(nn.Module):
    """Causal multi-head attention.

    Uses `scaled_dot_product_attention` unless something needs the scores or pattern (a hook on
    `hook_attn_scores`/`hook_pattern`, or `explicit = True`); both paths give the same output.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.scale = 1.0 / math.sqrt(e)
        self.explicit = False
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: Float[Tensor, "batch pos d_model"], past: tuple[Tensor, Tensor] | None = None
                ) -> Float[Tensor, "batch pos d_model"]:
        """Attention output for the positions of `x`. With `past` (keys and values
        [batch, p0, n_heads, d_head] of the p0 positions before them), `x` holds positions p0..
        and attends to those too; hook_q/k/v see only the new positions."""
        q = self.hook_q(_per_head(x, self.W_Q, self.b_Q))
        k = self.hook_k(_per_head(x, self.W_K, self.b_K))
        v = self.hook_v(_per_head(x, self.W_V, self.b_V))
        if past is not None:
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
        if self.explicit or self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks:
            z = self._explicit(q, k, v)
        else:  # [b, p, h, e] -> [b, h, p, e] for the fused kernel, and back
            n_q, n_k = q.shape[1], k.shape[1]
            mask = None if n_q == n_k else _causal(n_q, n_k, q.device).logical_not()
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=mask is None
            ).transpose(1, 2)
        z = self.hook_z(z)
        if self.hook_result.has_hooks:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            return result.sum(2) + self.b_O
        h, e, d = self.W_O.shape  # all heads' outputs in one product, bias included
        return torch.addmm(self.b_O, z.reshape(-1, h * e), self.W_O.reshape(h * e, d)).view(*z.shape[:-2], d)

    def _explicit(
        self,
        q: Float[Tensor, "batch pos n_heads d_head"],
        k: Float[Tensor, "batch pos n_heads d_head"],
        v: Float[Tensor, "batch pos n_heads d_head"],
    ) -> Float[Tensor, "batch pos n_heads d_head"]:
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        causal = _causal(q.shape[1], k.shape[1], scores.device)
        scores = self.hook_attn_scores(scores.masked_fill(causal, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(-1))
        return torch.einsum("bhqk,bkhe->bqhe", pattern, v)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = F.relu if cfg.act_fn == "relu" else F.gelu
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        # addmm adds each bias inside its matrix product instead of in another pass over the output.
        pre = self.hook_pre(torch.addmm(self.b_in, x.reshape(-1, x.shape[-1]), self.W_in).view(*x.shape[:-1], self.W_in.shape[1]))
        post = self.hook_post(self.act(pre))
        return torch.addmm(self.b_out, post.reshape(-1, post.shape[-1]), self.W_out).view(*x.shape[:-1], self.W_out.shape[1])


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab_out"]:
        # addmm adds the bias inside the matrix product: one pass fewer over the logits, which
        # dominate a step with a 50,257-token vocabulary.
        return torch.addmm(self.b_U, x.reshape(-1, x.shape[-1]), self.W_U).view(*x.shape[:-1], self.W_U.shape[1])


class TransformerBlock(nn.Module):
    """resid_pre -> (+ attn) resid_mid -> (+ mlp) resid_post, pre-LN when normalization is LN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ln = cfg.normalization == "LN"
        self.attn_only = cfg.attn_only
        # Registered in forward order, so hook_dict (and every cache) lists names in that order.
        self.hook_resid_pre = HookPoint()
        self.ln1 = LayerNorm(cfg) if ln else nn.Identity()
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()
        if not cfg.attn_only:
            self.hook_resid_mid = HookPoint()
            self.ln2 = LayerNorm(cfg) if ln else nn.Identity()
            self.mlp = MLP(cfg)
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Float[Tensor, "batch pos d_model"], past: tuple[Tensor, Tensor] | None = None
                ) -> Float[Tensor, "batch pos d_model"]:
        """`past`: the keys and values of earlier positions, as in `Attention.forward`."""
        resid = self.hook_resid_pre(resid)
        resid = resid + self.hook_attn_out(self.attn(self.ln1(resid), past))
        if not self.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)
