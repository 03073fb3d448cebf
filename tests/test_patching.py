"""Batched patching equals a naive loop of one full forward pass per cell, written here."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import tiny_model
from toylens.analysis.metrics import Accuracy, LogitDiff, NegLoss
from toylens.analysis import patching
from toylens.analysis.patching import Patcher, cell_masks
from toylens.model import act_name

# variant -> (activation, index axes as positions in the activation after the batch dim)
VARIANTS = {
    "resid_pre": ("resid_pre", {"pos": 0}),
    "attn_out": ("attn_out", {"pos": 0}),
    "mlp_out": ("mlp_out", {"pos": 0}),
    "head_out": ("z", {"head": 1}),
    "head_out_by_pos": ("z", {"pos": 0, "head": 1}),
    "head_pattern": ("pattern", {"head": 0}),
    "head_pattern_by_pos": ("pattern", {"head": 0, "dest": 1}),
    "head_values": ("v", {"head": 1}),
    "head_values_by_pos": ("v", {"pos": 0, "head": 1}),
}


def pair(seed=0, batch=5, pos=8):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 10, (batch, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 1 + torch.randint(0, 8, (batch,), generator=g)) % 10
    correct = torch.randint(0, 10, (batch, pos), generator=g)
    wrong = torch.randint(0, 10, (batch, pos), generator=g)
    return clean, corrupted, correct, wrong


def naive_grid(model, clean, corrupted, metric, activation, axes):
    """One forward pass from the corrupted tokens per cell, patching with plain indexing."""
    _, cache = model.run_with_cache(clean)
    act_shape = cache[activation, 0].shape[1:]
    sizes = [act_shape[d] for d in axes.values()]
    out = torch.zeros(model.cfg.n_layers, *sizes)
    for layer in range(model.cfg.n_layers):
        name = act_name(activation, layer)
        for cell in itertools.product(*map(range, sizes)):
            index = [slice(None)] * (len(act_shape) + 1)
            for d, i in zip(axes.values(), cell):
                index[d + 1] = i

            def hook(act, hook, index=tuple(index)):
                act = act.clone()
                act[index] = cache[name][index]
                return act

            logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])
            out[(layer, *cell)] = metric(logits).mean()
    return out


CASES = [(v, False, "LN") for v in VARIANTS] + [(v, True, "none") for v in VARIANTS if v != "mlp_out"]


@pytest.mark.parametrize("variant,attn_only,norm", CASES)
def test_batched_grid_equals_naive_loop(variant, attn_only, norm):
    activation, axes = VARIANTS[variant]
    model = tiny_model(n_layers=2, attn_only=attn_only, normalization=norm)
    clean, corrupted, correct, wrong = pair()
    metric = LogitDiff(correct, wrong)
    with torch.no_grad():
        naive = naive_grid(model, clean, corrupted, metric, activation, axes)
        patcher = Patcher(model, clean, corrupted, metric, max_rows=13)  # forces several chunks per layer
        grid = getattr(patcher, variant)()
    assert grid.grid_axes == ["layer", *axes]
    assert grid.values.shape == naive.shape
    assert (grid.values - naive).abs().max() <= 1e-5
    span = patcher.clean - patcher.corrupted
    torch.testing.assert_close(grid.normalized, (naive - patcher.corrupted) / span, atol=1e-4, rtol=1e-4)


# Grids outside the named variants, each through Patcher.grid: the fast path's other cases (a
# replaced resid_mid, all heads at one position, one head everywhere with no position axis, a
# whole layer at once) and the hook path's (a d_model component), on three layers.
GRIDS = [("resid_mid", {"pos": 0}), ("z", {"pos": 0}), ("attn_out", {}), ("mlp_out", {}),
         ("z", {"head": 1, "pos": 0}), ("resid_pre", {"d_model": 1})]


@pytest.mark.parametrize("activation,axes,attn_only", [(a, x, attn_only) for a, x in GRIDS for attn_only in (False, True)
                                                      if not (attn_only and a in ("resid_mid", "mlp_out"))])
def test_other_grids_equal_naive_loop(activation, axes, attn_only, monkeypatch):
    if activation != "resid_pre" or "pos" in axes:  # these must not need the hook path
        monkeypatch.setattr(patching, "_patched_pass", None)
    model = tiny_model(n_layers=3, attn_only=attn_only)
    clean, corrupted, correct, wrong = pair(seed=3, pos=7)
    metric = LogitDiff(correct, wrong)
    with torch.no_grad():
        naive = naive_grid(model, clean, corrupted, metric, activation, axes)
        grid = Patcher(model, clean, corrupted, metric, max_rows=11).grid(activation, tuple(axes))
    assert grid.values.shape == naive.shape
    assert (grid.values - naive).abs().max() <= 1e-5


@pytest.mark.parametrize("metric_cls", [NegLoss, Accuracy])
def test_other_metrics_and_ends(metric_cls):
    model = tiny_model(n_layers=2)
    clean, corrupted, correct, _ = pair(seed=1)
    targets = correct.clone()
    targets[:, :3] = -100
    metric = metric_cls(targets)
    with torch.no_grad():
        patcher = Patcher(model, clean, corrupted, metric)
        grid = patcher.resid_pre()
        naive = naive_grid(model, clean, corrupted, metric, "resid_pre", {"pos": 0})
    assert (grid.values - naive).abs().max() <= 1e-5
    # Patching the whole residual at layer 0 is the clean run; positions after the change see it.
    clean_value = metric(model(clean)).mean().item()
    assert abs(patcher.clean - float(clean_value)) < 1e-6


def test_patching_everything_at_a_position_restores_clean_there():
    model = tiny_model(n_layers=2)
    clean, corrupted, correct, wrong = pair(seed=2)
    metric = LogitDiff(correct, wrong)
    with torch.no_grad():
        grid = Patcher(model, clean, corrupted, metric).resid_pre()
    # Tokens differ only at position 2, so patching resid_pre[0] there gives the clean run back,
    # and patching any earlier position changes nothing.
    assert abs(float(grid.normalized[0, 2]) - 1) < 1e-4
    assert grid.normalized[:, :2].abs().max() < 1e-4


def test_cell_masks_mark_one_index_per_dim():
    mask = cell_masks(torch.Size([3, 4, 5]), [0, 1], torch.arange(12))
    assert mask.shape == (12, 3, 4, 1)
    for c in range(12):
        assert mask[c].sum() == 1 and mask[c, c // 4, c % 4, 0]
