"""Batched patching equals a naive loop of one full forward pass per cell, written here."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny_model, tol

from toylens.analysis import patching
from toylens.analysis.metrics import Accuracy, LogitDiff, NegLoss
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
    """One forward pass from the corrupted tokens per cell, patching with plain indexing; on the
    model's device, into a grid on the CPU (as Patcher returns its grids)."""
    device = next(model.parameters()).device
    clean, corrupted, metric = clean.to(device), corrupted.to(device), metric.to(device)
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

            def hook(act, hook, index=tuple(index), name=name):
                act = act.clone()
                act[index] = cache[name][index]
                return act

            logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])
            out[(layer, *cell)] = metric(logits).mean()
    return out


CASES = [(v, False, "LN") for v in VARIANTS] + [(v, True, "none") for v in VARIANTS if v != "mlp_out"]


@pytest.mark.parametrize("variant,attn_only,norm", CASES)
def test_batched_grid_equals_naive_loop(variant, attn_only, norm, device):
    activation, axes = VARIANTS[variant]
    model = tiny_model(n_layers=2, attn_only=attn_only, normalization=norm, device=device)
    clean, corrupted, correct, wrong = pair()
    metric = LogitDiff(correct, wrong)
    with torch.no_grad():
        naive = naive_grid(model, clean, corrupted, metric, activation, axes)
        patcher = Patcher(model, clean, corrupted, metric, max_rows=13)  # forces several chunks per layer
        grid = getattr(patcher, variant)()
    assert grid.grid_axes == ["layer", *axes]
    assert grid.values.shape == naive.shape
    assert (grid.values - naive).abs().max() <= tol(device)
    span = patcher.clean - patcher.corrupted
    torch.testing.assert_close(grid.normalized, (naive - patcher.corrupted) / span, atol=10 * tol(device), rtol=1e-4)


# Grids outside the named variants, each through Patcher.grid: the fast path's other cases (a
# replaced resid_mid, all heads at one position, one head everywhere with no position axis, a
# whole layer at once) and the hook path's (a d_model component), on three layers.
GRIDS = [
    ("resid_mid", {"pos": 0}),
    ("z", {"pos": 0}),
    ("attn_out", {}),
    ("mlp_out", {}),
    ("z", {"head": 1, "pos": 0}),
    ("resid_pre", {"d_model": 1}),
]


@pytest.mark.parametrize(
    "activation,axes,attn_only",
    [
        (a, x, attn_only)
        for a, x in GRIDS
        for attn_only in (False, True)
        if not (attn_only and a in ("resid_mid", "mlp_out"))
    ],
)
def test_other_grids_equal_naive_loop(activation, axes, attn_only, monkeypatch, device):
    if activation != "resid_pre" or "pos" in axes:  # these must not need the hook path
        monkeypatch.setattr(patching, "_patched_pass", None)
    model = tiny_model(n_layers=3, attn_only=attn_only, device=device)
    clean, corrupted, correct, wrong = pair(seed=3, pos=7)
    metric = LogitDiff(correct, wrong)
    with torch.no_grad():
        naive = naive_grid(model, clean, corrupted, metric, activation, axes)
        grid = Patcher(model, clean, corrupted, metric, max_rows=11).grid(activation, tuple(axes))
    assert grid.values.shape == naive.shape
    assert (grid.values - naive).abs().max() <= tol(device)


@pytest.mark.parametrize("metric_cls", [NegLoss, Accuracy])
def test_other_metrics_and_ends(metric_cls, device):
    model = tiny_model(n_layers=2, device=device)
    clean, corrupted, correct, _ = pair(seed=1)
    targets = correct.clone()
    targets[:, :3] = -100
    metric = metric_cls(targets)
    with torch.no_grad():
        patcher = Patcher(model, clean, corrupted, metric)
        grid = patcher.resid_pre()
        naive = naive_grid(model, clean, corrupted, metric, "resid_pre", {"pos": 0})
    assert (grid.values - naive).abs().max() <= tol(device)
    # Patching the whole residual at layer 0 is the clean run; positions after the change see it.
    clean_value = metric.to(device)(model(clean.to(device))).mean().item()
    assert abs(patcher.clean - float(clean_value)) < tol(device) / 10


def test_patching_everything_at_a_position_restores_clean_there(device):
    model = tiny_model(n_layers=2, device=device)
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


# --- cells that change nothing the metric reads --------------------------------------------
# Under causal attention a patch at a position changes only that position and later ones, so a
# cell after the last position the metric reads scores the base (corrupted) run, with no pass.
# Language-model pairs are like this (the repeated sequence ends one position after its last
# answer), as are padded batches and windows with no answer at all.
FAST_CASES = [
    ("resid_pre", {"pos": 0}),
    ("attn_out", {"pos": 0}),
    ("mlp_out", {"pos": 0}),
    ("z", {"pos": 0, "head": 1}),
    ("resid_mid", {"pos": 0}),
    ("z", {"head": 1}),
]
ALL_CASES = FAST_CASES + [("v", {"pos": 0, "head": 1}), ("pattern", {"head": 0, "dest": 1}), ("pattern", {"head": 0})]


def patched_positions(monkeypatch):
    """Record the positions of every cell the fast path runs."""
    seen, fast_pass = [], patching.fast_pass

    def recording(*args, **kwargs):
        idx = args[6]
        if "pos" in idx:
            seen.append(idx["pos"])
        return fast_pass(*args, **kwargs)

    monkeypatch.setattr(patching, "fast_pass", recording)
    return seen


def assert_equals_naive(model, clean, corrupted, metric, activation, axes, max_rows):
    with torch.no_grad():
        naive = naive_grid(model, clean, corrupted, metric, activation, axes)
        grid = Patcher(model, clean, corrupted, metric, max_rows=max_rows).grid(activation, tuple(axes))
    assert grid.values.shape == naive.shape
    assert torch.isfinite(grid.values).all()
    assert (grid.values - naive).abs().max() <= tol(next(model.parameters()).device)
    return grid


@pytest.mark.parametrize("activation,axes", FAST_CASES)
@pytest.mark.parametrize("n_layers", [1, 2])
def test_position_groups_after_the_last_read_position(activation, axes, n_layers, monkeypatch, device):
    """The metric reads positions 2..4 of 8: the position groups of 5..7 have nothing to compute
    (one cell per pass, so each such group is a pass of its own)."""
    model = tiny_model(n_layers=n_layers, device=device)
    clean, corrupted, correct, wrong = pair(seed=4)
    correct[:, :2] = -100
    correct[:, 5:] = -100
    seen = patched_positions(monkeypatch)
    assert_equals_naive(model, clean, corrupted, LogitDiff(correct, wrong), activation, axes, max_rows=5)
    if "pos" in axes:
        assert seen and int(torch.cat(seen).max()) == 4  # nothing ran for positions 5..7


@pytest.mark.parametrize("activation,axes", ALL_CASES)
def test_padded_batch(activation, axes, device):
    """Reviews of different lengths right-padded to a common width beyond the longest: each row
    reads only its last real token (as for classification), and the last positions are padding
    in every row."""
    model = tiny_model(n_layers=2, device=device)
    clean, corrupted, _, _ = pair(seed=5)
    lengths = torch.tensor([5, 3, 4, 2, 5])
    rows = torch.arange(len(lengths))
    pad = torch.arange(clean.shape[1]) >= lengths[:, None]
    clean, corrupted = clean.masked_fill(pad, 0), corrupted.masked_fill(pad, 0)
    correct = torch.full_like(clean, -100)
    wrong = torch.full_like(clean, -100)
    correct[rows, lengths - 1] = torch.tensor([1, 0, 1, 1, 0])
    wrong[rows, lengths - 1] = 1 - correct[rows, lengths - 1]
    assert_equals_naive(model, clean, corrupted, LogitDiff(correct, wrong), activation, axes, max_rows=7)


@pytest.mark.parametrize("activation,axes", ALL_CASES)
def test_windows_without_read_positions(activation, axes, device):
    """Two windows read nothing (their metric is 0, as in the naive loop) and the others read
    positions 3..5; and when no window reads anything every cell is the base run's value."""
    model = tiny_model(n_layers=2, device=device)
    clean, corrupted, correct, _ = pair(seed=6)
    targets = torch.full_like(correct, -100)
    targets[2:, 3:6] = correct[2:, 3:6]
    assert_equals_naive(model, clean, corrupted, NegLoss(targets), activation, axes, max_rows=5)
    nothing = torch.full_like(correct, -100)
    grid = assert_equals_naive(model, clean, corrupted, NegLoss(nothing), activation, axes, max_rows=5)
    assert (grid.values == 0).all() and grid.clean == grid.corrupted == 0
    assert grid.normalized.isnan().all()  # no span to normalise by


# ------------------------------------------------------------------ chunk sizes from free memory


def test_rows_within_a_share_of_free_memory():
    gib, mib = 2**30, 2**20
    assert patching.rows_within(8 * gib, mib) == 1024  # 1/8 of 8 GiB in rows of 1 MiB
    assert patching.rows_within(8 * gib, mib, share=0.5) == 4096
    assert patching.rows_within(8 * gib, 3 * mib) == 341  # whole rows only
    assert patching.rows_within(100, mib) == 1  # never fewer than one row
    assert patching.rows_within(0, mib) == 1


def test_rows_per_pass_from_the_devices_memory(device, monkeypatch):
    """CPU: DEFAULT_BUDGET elements of the widest activation. CUDA: FREE_MEMORY_SHARE of the free
    memory (mem_get_info, fixed here to 8 GiB) over a row's bytes."""
    model = tiny_model(device=device)
    pos, width = 8, 12 * 4  # the tiny model's widest activation: 4 x d_model (d_vocab_out is 10)
    if device.type == "cuda":
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (8 * 2**30, 16 * 2**30))
        assert patching.rows_per_pass(model, pos) == patching.rows_within(8 * 2**30, pos * width * 4)
    else:
        assert patching.rows_per_pass(model, pos) == patching.DEFAULT_BUDGET // (pos * width)
    assert patching.rows_per_pass(model, pos, budget=10 * pos * width) == 10  # an explicit budget wins


@pytest.mark.parametrize("variant", ["resid_pre", "head_out_by_pos", "head_pattern"])
def test_chunked_grids_equal_one_pass_grids(variant, device):
    """Passes of 3 rows (many chunks per layer) give the grid of the device's own chunk size (here one
    pass per layer); tolerance tol(device): the same arithmetic, stacked differently."""
    model = tiny_model(n_layers=2, device=device)
    clean, corrupted, correct, wrong = pair()
    metric = LogitDiff(correct, wrong)
    chunked = getattr(Patcher(model, clean, corrupted, metric, max_rows=3), variant)().values
    whole = getattr(Patcher(model, clean, corrupted, metric), variant)().values
    assert patching.rows_per_pass(model, 8) >= 5 * 8 * 3  # the default pass holds every cell of a layer
    torch.testing.assert_close(chunked, whole, rtol=tol(device), atol=tol(device))
