"""The decoder-only transformer: embed -> blocks -> final norm -> unembed, hooked everywhere.

    model = Transformer(cfg)                       # cfg: a resolved ModelConfig
    logits = model(tokens)                         # [batch, pos, d_vocab_out]
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", fn)])
    logits = model(residual=resid, start_at_layer=1, positions=read)   # part of the model (patching)

The modules compute with `toylens.model.functional`, the arithmetic written once.
`model.W_Q` etc. are the weights stacked over layers ([n_layers, n_heads, d_model, d_head]),
as in TransformerLens; `model.QK` and `model.OV` are every head's circuits as `FactoredMatrix`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from toylens.config import ModelConfig, derived
from toylens.errors import ToylensError
from toylens.model.components import Blocks, Embed, LayerNorm, PosEmbed, TransformerBlock, Unembed
from toylens.model.factored import FactoredMatrix
from toylens.model.hooks import HookedRootModule, HookPoint


class Transformer(HookedRootModule):
    def __init__(self, cfg: ModelConfig, seed: int | None = 0):
        super().__init__()
        if not cfg.is_resolved:
            raise ValueError("Transformer needs a resolved ModelConfig (see ModelConfig.resolved)")
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()
        self.blocks = Blocks([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        # Without normalization ln_final is an identity that still has hook_normalized.
        self.ln_final: LayerNorm | _IdentityNorm = LayerNorm(cfg) if cfg.normalization == "LN" else _IdentityNorm()
        self.unembed = Unembed(cfg)
        self.setup_hooks()
        if seed is not None:
            self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        """Normal(0, init_range) weights, zero biases, unit LayerNorm gains; deterministic in seed."""
        gen = torch.Generator().manual_seed(seed)
        init_range = derived(self.cfg.init_range, "init_range")
        with torch.no_grad():
            for name, p in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("W_"):
                    p.copy_(torch.randn(p.shape, generator=gen) * init_range)
                elif leaf == "w":
                    p.fill_(1.0)
                else:
                    p.zero_()

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"] | None = None,
        *,
        residual: Float[Tensor, "batch pos d_model"] | None = None,
        start_at_layer: int = 0,
        stop_at_layer: int | None = None,
        after_attention: bool = False,
        past: dict[int, tuple[Tensor, Tensor]] | None = None,
        positions: Int[Tensor, " n"] | None = None,
    ) -> Tensor:
        """Logits [batch, pos, d_vocab_out] for `tokens`.

        The other arguments run part of the model on a given residual stream, as patching and
        ablation do:
        - start_at_layer=l runs from `residual`, the resid_pre of block l (l = n_layers: the
          final residual stream), instead of from tokens; with after_attention=True `residual`
          is the stream after block l's attention (its resid_mid) and block l runs its MLP only;
        - stop_at_layer=l returns the resid_pre of block l instead of logits;
        - past={l: (k, v)} gives block l the keys and values [batch, p0, n_heads, d_head] of p0
          positions before those `residual` holds: under causal attention a stream that differs
          from some run only from position p0 on can start there, with that run's keys and values;
        - positions (indices into `residual`'s positions) returns the output there only
          [batch, len(positions), ...]: the final norm and the unembedding run only there.
        """
        if residual is None:
            if start_at_layer > 0:
                raise ValueError("residual is required when start_at_layer > 0")
            if tokens is None:
                raise ValueError("tokens (or residual) are required")
            n_ctx = derived(self.cfg.n_ctx, "n_ctx")
            if tokens.shape[-1] > n_ctx:
                raise ToylensError(f"input has {tokens.shape[-1]} positions; the model's n_ctx is {n_ctx}")
            residual = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))
        past = past or {}
        layers = range(self.cfg.n_layers)[start_at_layer:stop_at_layer]
        for layer in layers:
            mlp_only = after_attention and layer == layers[0]
            residual = self.blocks[layer](residual, past.get(layer), after_attention=mlp_only)
        if positions is not None:
            residual = residual[:, positions]
        if stop_at_layer is not None:
            return residual
        return self.unembed(self.ln_final(residual))

    @property
    def explicit_attention(self) -> bool:
        return all(b.attn.explicit for b in self.blocks)

    @explicit_attention.setter
    def explicit_attention(self, value: bool) -> None:
        """Force the explicit (pattern-materialising) attention path in every layer."""
        for b in self.blocks:
            b.attn.explicit = value

    @property
    def split_qkv_input(self) -> bool:
        return all(b.split_qkv_input for b in self.blocks)

    @split_qkv_input.setter
    def split_qkv_input(self, value: bool) -> None:
        """Give every head's query, key and value its own copy of the residual stream, at
        blocks.{l}.hook_q_input / hook_k_input / hook_v_input (which fire only then)."""
        for b in self.blocks:
            b.split_qkv_input = value

    # Weights stacked over layers, TransformerLens style.
    def _stack(self, module: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(b, module), name) for b in self.blocks])

    W_E = property(lambda self: self.embed.W_E)
    W_pos = property(lambda self: self.pos_embed.W_pos)
    W_U = property(lambda self: self.unembed.W_U)
    b_U = property(lambda self: self.unembed.b_U)
    W_Q = property(lambda self: self._stack("attn", "W_Q"))
    W_K = property(lambda self: self._stack("attn", "W_K"))
    W_V = property(lambda self: self._stack("attn", "W_V"))
    W_O = property(lambda self: self._stack("attn", "W_O"))
    b_Q = property(lambda self: self._stack("attn", "b_Q"))
    b_K = property(lambda self: self._stack("attn", "b_K"))
    b_V = property(lambda self: self._stack("attn", "b_V"))
    b_O = property(lambda self: self._stack("attn", "b_O"))
    W_in = property(lambda self: self._stack("mlp", "W_in"))
    W_out = property(lambda self: self._stack("mlp", "W_out"))
    b_in = property(lambda self: self._stack("mlp", "b_in"))
    b_out = property(lambda self: self._stack("mlp", "b_out"))

    @property
    def QK(self) -> FactoredMatrix:
        """Every head's QK circuit W_Q @ W_K^T, factored: [n_layers, n_heads, d_model, d_model]."""
        return FactoredMatrix(self.W_Q, self.W_K.mT)

    @property
    def OV(self) -> FactoredMatrix:
        """Every head's OV circuit W_V @ W_O, factored: [n_layers, n_heads, d_model, d_model]."""
        return FactoredMatrix(self.W_V, self.W_O)


class _IdentityNorm(nn.Module):
    """Stands in for ln_final without normalization, so `ln_final.hook_normalized` always exists."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.hook_normalized(x)
