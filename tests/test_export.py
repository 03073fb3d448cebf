"""TransformerLens export: same log-probs, patterns and z; TransformerLens's own patching agrees with ours."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, tol

from toylens.analysis.metrics import LogitDiff
from toylens.analysis.patching import Patcher
from toylens.export import to_transformer_lens

# A clean skip where TransformerLens is not installed (a GPU machine without it), not a collection error.
tl_patching = pytest.importorskip("transformer_lens.patching")

ARCHS = [
    dict(n_layers=2, attn_only=False, normalization="LN", act_fn="gelu"),
    dict(n_layers=2, attn_only=True, normalization="none", act_fn="relu"),
    dict(n_layers=1, attn_only=False, normalization="none", act_fn="relu"),
]


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_model_matches(arch, tokens, device):
    model = tiny_model(**arch, device=device)  # d_head 5 x 3 heads != d_model 12: shapes are not interchangeable
    tokens = tokens.to(device)
    tl = to_transformer_lens(model)  # on the model's device
    with torch.no_grad():
        ours, cache = model.run_with_cache(tokens)
        theirs, tl_cache = tl.run_with_cache(tokens)
    assert (ours.log_softmax(-1) - theirs.log_softmax(-1)).abs().max() <= tol(device)
    for layer in range(arch["n_layers"]):
        for name in ("pattern", "z"):
            torch.testing.assert_close(
                tl_cache[f"blocks.{layer}.attn.hook_{name}"],
                cache[name, layer],
                atol=tol(device) / 10,
                rtol=tol(device),
            )


TL_FUNCTIONS = {
    "resid_pre": "get_act_patch_resid_pre",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "head_out": "get_act_patch_attn_head_out_all_pos",
    "head_out_by_pos": "get_act_patch_attn_head_out_by_pos",
    "head_pattern": "get_act_patch_attn_head_pattern_all_pos",
    "head_pattern_by_pos": "get_act_patch_attn_head_pattern_by_pos",
    "head_values": "get_act_patch_attn_head_v_all_pos",
    "head_values_by_pos": "get_act_patch_attn_head_v_by_pos",
    "head_queries_by_pos": "get_act_patch_attn_head_q_by_pos",
    "head_keys": "get_act_patch_attn_head_k_all_pos",
}


@pytest.fixture(scope="module")
def patch_setup(device):
    model = tiny_model(n_layers=2, normalization="LN", device=device)
    g = torch.Generator().manual_seed(7)
    clean = torch.randint(0, 11, (4, 8), generator=g).to(device)
    corrupted = clean.clone()
    corrupted[:, 3] = (clean[:, 3] + 1) % 11
    metric = LogitDiff(torch.randint(0, 10, (4, 8), generator=g), torch.randint(0, 10, (4, 8), generator=g)).to(device)
    tl = to_transformer_lens(model)
    with torch.no_grad():
        _, tl_clean_cache = tl.run_with_cache(clean)
    return model, tl, clean, corrupted, metric, tl_clean_cache


@pytest.mark.parametrize("variant", list(TL_FUNCTIONS))
def test_patching_equals_transformer_lens(patch_setup, variant, device):
    model, tl, clean, corrupted, metric, tl_clean_cache = patch_setup
    ours = getattr(Patcher(model, clean, corrupted, metric), variant)().values
    with torch.no_grad():
        theirs = getattr(tl_patching, TL_FUNCTIONS[variant])(
            tl, corrupted, tl_clean_cache, lambda logits: metric(logits).mean()
        )
    assert ours.shape == theirs.shape
    assert (ours - theirs.cpu()).abs().max() <= tol(device)
