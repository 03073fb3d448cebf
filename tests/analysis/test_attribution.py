"""Cache algebra: the parts add up to the model's own activations and logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from toylens.analysis.attribution import direct_logit_attribution, logit_attribution, logit_lens
from toylens.analysis.residual import accumulated_resid, apply_ln_final, ln_final_bias, residual_components

CONFIGS = [(False, "LN"), (True, "none"), (False, "none"), (True, "LN")]


@pytest.mark.parametrize("attn_only,norm", CONFIGS)
def test_components_sum_to_the_residual(tokens, attn_only, norm):
    model = tiny_model(n_layers=2, attn_only=attn_only, normalization=norm)
    _, cache = model.run_with_cache(tokens)
    final = residual_components(model, cache)
    n_parts = 2 + 2 * (3 + 1 + (0 if attn_only else 1))
    assert final.stack.shape == (n_parts, *tokens.shape, 12) and len(final.labels) == n_parts
    torch.testing.assert_close(final.stack.sum(0), cache["resid_post", 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        residual_components(model, cache, 1).stack.sum(0), cache["resid_pre", 1], atol=1e-5, rtol=1e-5
    )
    through = apply_ln_final(model, cache, final.stack).sum(0) + ln_final_bias(model)
    torch.testing.assert_close(through, cache["ln_final.hook_normalized"], atol=1e-5, rtol=1e-5)
    acc = accumulated_resid(model, cache)
    assert acc.labels == ["resid_pre 0", "resid_pre 1", "final"]


@pytest.mark.parametrize("attn_only,norm", CONFIGS)
@pytest.mark.parametrize("baseline", ["mean", "wrong"])
def test_dla_adds_up_to_the_logit_difference(tokens, attn_only, norm, baseline):
    model = tiny_model(n_layers=2, attn_only=attn_only, normalization=norm)
    g = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 10, tokens.shape, generator=g)
    wrong = torch.randint(0, 10, tokens.shape, generator=g) if baseline == "wrong" else None
    logits, cache = model.run_with_cache(tokens)
    labels, dla = direct_logit_attribution(model, cache, targets, wrong)
    picked = logits.gather(-1, targets[..., None])[..., 0]
    expect = picked - (logits.mean(-1) if wrong is None else logits.gather(-1, wrong[..., None])[..., 0])
    torch.testing.assert_close(dla.sum(0), expect, atol=1e-4, rtol=1e-4)
    assert labels[-1].startswith("bias") and len(labels) == len(dla)


def test_dla_of_a_last_layer_head_is_its_removal_effect(tokens):
    """Without LayerNorm, a last-layer head's direct effect is exactly what removing it changes."""
    model = tiny_model(n_layers=2, attn_only=True, normalization="none")
    targets = torch.randint(0, 10, tokens.shape, generator=torch.Generator().manual_seed(4))
    logits, cache = model.run_with_cache(tokens)
    labels, dla = direct_logit_attribution(model, cache, targets)
    for h in range(3):

        def kill(z, hook, h=h):
            z = z.clone()
            z[:, :, h] = 0
            return z

        ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", kill)])
        diff = lambda x: x.gather(-1, targets[..., None])[..., 0] - x.mean(-1)  # noqa: E731
        torch.testing.assert_close(dla[labels.index(f"L1H{h}")], diff(logits) - diff(ablated), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["LN", "none"])
def test_logit_lens_last_layer_is_the_model(tokens, norm):
    model = tiny_model(n_layers=2, normalization=norm)
    targets = torch.randint(0, 10, tokens.shape, generator=torch.Generator().manual_seed(5))
    targets[:, 0] = -100
    lens = logit_lens(model, tokens, targets)
    logits = model(tokens).detach()
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert lens.labels[-1] == "final" and lens.loss.shape == (3,)
    assert abs(float(lens.loss[-1]) - float(loss)) < 1e-5
    acc = ((logits.argmax(-1) == targets) & (targets >= 0)).sum() / (targets >= 0).sum()
    assert abs(float(lens.accuracy[-1]) - float(acc)) < 1e-6
    attribution = logit_attribution(model, tokens, targets)
    assert attribution.by_pos[:, 0].isnan().all() and not attribution.by_pos[:, 1:].isnan().any()
    picked = logits.gather(-1, targets.clamp_min(0)[..., None])[..., 0] - logits.mean(-1)
    assert abs(float(attribution.total.sum()) - float(picked[:, 1:].mean())) < 1e-4
