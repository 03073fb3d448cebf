"""Batched ablations equal one forward pass per head / neuron with a plain hook, written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model, tol

from toylens.analysis.ablation import ablate
from toylens.errors import ToylensError


def naive_loss_change(model, tokens, targets, kind, activation, n_units):
    device = next(model.parameters()).device
    tokens, targets = tokens.to(device), targets.to(device)
    _, cache = model.run_with_cache(tokens)
    loss = lambda logits: F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)  # noqa: E731
    base = loss(model(tokens))
    perm = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0)).to(device)
    out = torch.zeros(model.cfg.n_layers, n_units)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z" if activation == "z" else f"blocks.{layer}.mlp.hook_post"
        act = cache[name]
        for unit in range(n_units):

            def hook(x, hook, unit=unit, act=act):
                x = x.clone()
                sel = (slice(None), slice(None), unit)
                if kind == "zero":
                    x[sel] = 0
                elif kind == "mean":
                    x[sel] = act[sel].mean(0, keepdim=True)
                else:
                    x[sel] = act[perm][sel]
                return x

            out[layer, unit] = loss(model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])) - base
    return out, float(base)


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablation_equals_naive_loop(kind, device):
    model = tiny_model(n_layers=2, normalization="LN", device=device)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (6, 8), generator=g)
    targets = torch.randint(0, 10, (6, 8), generator=g)
    targets[:, :2] = -100  # every example has the same number of targets, so per-example means average right
    with torch.no_grad():
        result = ablate(model, tokens, targets, kind, max_rows=20)
        heads, base = naive_loss_change(model, tokens, targets, kind, "z", 3)
        neurons, _ = naive_loss_change(model, tokens, targets, kind, "post", 20)
    assert abs(result.base_loss - base) < tol(device)
    assert result.heads.shape == (2, 3) and result.neurons.shape == (2, 20)
    assert (result.heads - heads).abs().max() <= tol(device)
    assert (result.neurons - neurons).abs().max() <= tol(device)


def test_attention_only_model_has_no_neurons(device):
    model = tiny_model(n_layers=1, attn_only=True, device=device)
    tokens = torch.randint(0, 11, (4, 8))
    result = ablate(model, tokens, tokens.clamp(max=9), "zero")
    assert result.neurons.shape == (1, 0) and result.heads.shape == (1, 3)
    with pytest.raises(ToylensError, match="ablation kind"):
        ablate(model, tokens, tokens.clamp(max=9), "median")
