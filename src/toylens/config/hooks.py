"""Every hook point and parameter of the transformer, with its shape: the one place they are listed.

Shapes use b = batch, p = query position, k = key position, h = head.

| hook                               | shape                    | what                                  |
|------------------------------------|--------------------------|---------------------------------------|
| hook_embed                         | [b, p, d_model]          | token embedding W_E[tokens]           |
| hook_pos_embed                     | [b, p, d_model]          | positional embedding W_pos[:p]        |
| blocks.{l}.hook_resid_pre          | [b, p, d_model]          | residual stream entering block l      |
| blocks.{l}.hook_q_input / _k_input / _v_input | [b, p, h, d_model] | each head's own copy of resid_pre (*) |
| blocks.{l}.ln1.hook_scale          | [b, p, 1]                | LayerNorm scale (normalization: LN)   |
| blocks.{l}.ln1.hook_normalized     | [b, p, d_model]          | LayerNorm output (normalization: LN)  |
| blocks.{l}.attn.hook_q / hook_k / hook_v | [b, p, h, d_head]  | queries, keys, values (with biases)   |
| blocks.{l}.attn.hook_attn_scores   | [b, h, p, k]             | scaled, causally masked (-inf) scores |
| blocks.{l}.attn.hook_pattern       | [b, h, p, k]             | softmax of the scores                 |
| blocks.{l}.attn.hook_z             | [b, p, h, d_head]        | pattern-weighted values               |
| blocks.{l}.attn.hook_result        | [b, p, h, d_model]       | per-head output z @ W_O (when hooked) |
| blocks.{l}.hook_attn_out           | [b, p, d_model]          | attention output (sum of heads + b_O) |
| blocks.{l}.hook_resid_mid          | [b, p, d_model]          | resid_pre + attn_out (not attn_only)  |
| blocks.{l}.hook_mlp_in             | [b, p, d_model]          | the MLP's input, before ln2 (= resid_mid) |
| blocks.{l}.ln2.hook_scale / hook_normalized |                 | LayerNorm before the MLP              |
| blocks.{l}.mlp.hook_pre            | [b, p, d_mlp]            | x @ W_in + b_in                       |
| blocks.{l}.mlp.hook_post           | [b, p, d_mlp]            | act_fn(hook_pre)                      |
| blocks.{l}.hook_mlp_out            | [b, p, d_model]          | MLP output                            |
| blocks.{l}.hook_resid_post         | [b, p, d_model]          | residual stream leaving block l       |
| ln_final.hook_scale / hook_normalized |                       | final LayerNorm (LN) / input to W_U   |

(*) for its queries, keys and values, before ln1: they fire only with `model.split_qkv_input = True`
(TransformerLens's use_split_qkv_input), which attribution over edges sets while it runs.

`ln_final.hook_normalized` exists with `normalization: none` too (as an identity), so the input
to the unembedding always has a name.

| parameter                         | shape                        |
|-----------------------------------|------------------------------|
| embed.W_E                         | [d_vocab, d_model]           |
| pos_embed.W_pos                   | [n_ctx, d_model]             |
| blocks.{l}.attn.W_Q, W_K, W_V     | [n_heads, d_model, d_head]   |
| blocks.{l}.attn.b_Q, b_K, b_V     | [n_heads, d_head]            |
| blocks.{l}.attn.W_O               | [n_heads, d_head, d_model]   |
| blocks.{l}.attn.b_O               | [d_model]                    |
| blocks.{l}.mlp.W_in / b_in        | [d_model, d_mlp] / [d_mlp]   |
| blocks.{l}.mlp.W_out / b_out      | [d_mlp, d_model] / [d_model] |
| blocks.{l}.ln1.w, .b (ln2, ln_final) | [d_model]                 |
| unembed.W_U / b_U                 | [d_model, d_vocab_out] / [d_vocab_out] |
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Architecture(Protocol):
    """What decides a model's hook names (a `ModelConfig` has it); the config's validation lists
    hook names from it without building, or importing, the model."""

    @property
    def n_layers(self) -> int: ...

    @property
    def attn_only(self) -> bool: ...

    @property
    def normalization(self) -> str: ...


ATTN_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z", "hook_result")
MLP_HOOKS = ("hook_pre", "hook_post")
LN_HOOKS = ("hook_scale", "hook_normalized")


def hook_names(cfg: Architecture) -> list[str]:
    """All hook names of a model with this config, in forward order (no model is built)."""
    ln = cfg.normalization == "LN"
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        names.append(f"{b}.hook_resid_pre")
        names += [f"{b}.hook_{x}_input" for x in "qkv"]
        if ln:
            names += [f"{b}.ln1.{h}" for h in LN_HOOKS]
        names += [f"{b}.attn.{h}" for h in ATTN_HOOKS]
        names.append(f"{b}.hook_attn_out")
        if not cfg.attn_only:
            names += [f"{b}.hook_resid_mid", f"{b}.hook_mlp_in"]
            if ln:
                names += [f"{b}.ln2.{h}" for h in LN_HOOKS]
            names += [f"{b}.mlp.{h}" for h in MLP_HOOKS]
            names.append(f"{b}.hook_mlp_out")
        names.append(f"{b}.hook_resid_post")
    names += ["ln_final.hook_scale", "ln_final.hook_normalized"] if ln else ["ln_final.hook_normalized"]
    return names


_SHORT = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    **{n: f"attn.hook_{n}" for n in ("q", "k", "v", "z", "attn_scores", "pattern", "result")},
    "scores": "attn.hook_attn_scores",
    "attn": "attn.hook_pattern",
    **{n: f"hook_{n}" for n in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")},
    **{f"{n}_input": f"hook_{n}_input" for n in "qkv"},
    "pre": "mlp.hook_pre",
    "post": "mlp.hook_post",
}


def act_name(name: str, layer: int | None = None, sublayer: str | None = None) -> str:
    """Expand a short activation name as TransformerLens's `get_act_name` does.

    act_name("pattern", 0) -> "blocks.0.attn.hook_pattern"; act_name("resid_post", 1) ->
    "blocks.1.hook_resid_post"; act_name("scale", 0, "ln1") -> "blocks.0.ln1.hook_scale";
    act_name("embed") -> "hook_embed". Full names pass through unchanged.
    """
    if "." in name or (name.startswith("hook_") and layer is None):
        return name
    name = name.removeprefix("hook_")
    if name in ("scale", "normalized"):
        where = sublayer or "ln_final"
        return f"{where}.hook_{name}" if where == "ln_final" else f"blocks.{layer}.{where}.hook_{name}"
    if name not in _SHORT:
        raise KeyError(f"unknown activation name {name!r}")
    full = _SHORT[name]
    if full.startswith("hook_") and name in ("embed", "pos_embed"):
        return full
    if layer is None:
        raise KeyError(f"activation {name!r} needs a layer")
    return f"blocks.{layer}.{full}"
