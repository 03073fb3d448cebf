"""Cache algebra: the residual stream as a sum of parts, and the final LayerNorm applied to parts.

The residual stream entering block `l` is exactly

    hook_embed + hook_pos_embed + sum over layers < l of ( sum over heads z_h @ W_O[h]  +  b_O
                                                            + mlp_out )

`residual_components` returns those parts stacked (one per head, one attention bias per layer,
one per MLP with its bias), so they sum to `resid_pre` of that layer (or the final residual).
`accumulated_resid` returns the running sums (the residual after each layer: the logit lens).

`apply_ln_final` maps parts through the final LayerNorm the way the field does: centre each
part and divide by the scale *cached from the real forward pass*, then multiply by ln_final.w.
Because that is linear, the parts still add up: sum(apply_ln_final(parts)) + ln_final.b equals
the actual input to the unembedding. Without normalization it is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from toylens.model import ActivationCache, Transformer, act_name
from toylens.model import functional as core
from toylens.model.components import LayerNorm


@dataclass
class Components:
    """Parts of the residual stream: `stack[i]` is the part called `labels[i]`."""

    labels: list[str]
    stack: Float[Tensor, "component batch pos d_model"]


def needed_hooks(model: Transformer) -> list[str]:
    """The hook names the decompositions here read from a cache."""
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(model.cfg.n_layers):
        names += [act_name(n, layer) for n in ("resid_pre", "z", "resid_post")]
        if not model.cfg.attn_only:
            names.append(act_name("mlp_out", layer))
    if model.cfg.normalization == "LN":
        names.append("ln_final.hook_scale")
    return names


def residual_components(model: Transformer, cache: ActivationCache, layer: int | None = None) -> Components:
    """Embeddings, every head, every attention bias and every MLP that write into the residual
    stream before block `layer` (default: all of them, i.e. the final residual)."""
    layer = model.cfg.n_layers if layer is None else layer
    labels, parts = ["embed", "pos_embed"], [cache["hook_embed"], cache["hook_pos_embed"]]
    for l in range(layer):
        block = model.blocks[l]
        heads = core.head_results(cache["z", l], block.attn.W_O).movedim(-2, 0)  # [head, batch, pos, d_model]
        labels += [f"L{l}H{h}" for h in range(model.cfg.n_heads)] + [f"L{l} b_O"]
        parts += list(heads) + [block.attn.b_O.expand_as(heads[0])]
        if not model.cfg.attn_only:
            labels.append(f"MLP{l}")
            parts.append(cache["mlp_out", l])
    return Components(labels, torch.stack(parts).detach())


def accumulated_resid(model: Transformer, cache: ActivationCache) -> Components:
    """The residual stream before each block and after the last: [n_layers + 1, batch, pos, d_model]."""
    n = model.cfg.n_layers
    labels = [f"resid_pre {l}" for l in range(n)] + ["final"]
    parts = [cache["resid_pre", l] for l in range(n)] + [cache["resid_post", n - 1]]
    return Components(labels, torch.stack(parts))


def apply_ln_final(
    model: Transformer, cache: ActivationCache, stack: Float[Tensor, "component batch pos d_model"]
) -> Float[Tensor, "component batch pos d_model"]:
    """Each part through ln_final, linearised with the cached scale (without the bias ln_final.b)."""
    if not isinstance(model.ln_final, LayerNorm):  # normalization "none"
        return stack
    return core.layer_norm(stack, model.ln_final.w, scale=cache["ln_final.hook_scale"])


def ln_final_bias(model: Transformer) -> Float[Tensor, " d_model"]:
    """The constant ln_final adds (zero without normalization)."""
    if not isinstance(model.ln_final, LayerNorm):  # normalization "none"
        return torch.zeros(model.cfg.d_model, device=model.W_U.device)
    return model.ln_final.b.detach()


def resid_at(model: Transformer, base: ActivationCache, stage: str, layer: int) -> Tensor:
    """A cached run's residual stream at `stage` of `layer` [batch, pos, d_model]: "pre" is the
    block's resid_pre, "mid" after its attention, "post" after its MLP (the next block's resid_pre,
    or the final residual)."""
    if stage == "pre":
        return base["resid_pre", layer]
    if stage == "mid":
        if model.cfg.attn_only:
            return base["resid_pre", layer] + base["attn_out", layer]
        return base["resid_mid", layer]
    if layer + 1 < model.cfg.n_layers:
        return base["resid_pre", layer + 1]
    return resid_at(model, base, "mid", layer) + (0 if model.cfg.attn_only else base["mlp_out", layer])


def cached_past(
    model: Transformer, base: ActivationCache, layer: int, start: int, copies: int
) -> dict[int, tuple[Tensor, Tensor]]:
    """A cached run's keys and values before position `start` in blocks `layer`.. (the `past` of a
    forward that starts at `start`), for a stack of `copies` copies of the cached batch."""
    if start == 0:
        return {}
    return {
        j: (base["k", j][:, :start].repeat(copies, 1, 1, 1), base["v", j][:, :start].repeat(copies, 1, 1, 1))
        for j in range(layer, model.cfg.n_layers)
    }
