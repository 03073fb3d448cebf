"""Head scores against float64 loops over (sequence, query, key), written here."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model

from toylens.analysis.attention import (
    duplicate_token,
    first_token,
    head_scores,
    induction,
    next_output,
    previous_token,
    repeated_token_scores,
    repeated_tokens,
)


def float64_patterns(model, tokens):
    m = copy.deepcopy(model).double()
    _, cache = m.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache["pattern", l] for l in range(model.cfg.n_layers)], 1)  # [b, l, h, q, k]


def brute(patterns, wanted):
    """Mean over (b, q) with any wanted key of the attention on wanted keys; and argmax hit rate."""
    b, L, H, p, _ = patterns.shape
    score = torch.zeros(L, H, dtype=torch.float64)
    hit = torch.zeros(L, H, dtype=torch.float64)
    any_hit = torch.zeros(L, dtype=torch.float64)
    n = 0
    for i in range(b):
        for q in range(p):
            keys = [k for k in range(p) if wanted(i, q, k)]
            if not keys:
                continue
            n += 1
            for l in range(L):
                hits = [int(patterns[i, l, h, q].argmax()) in keys for h in range(H)]
                any_hit[l] += float(any(hits))
                for h in range(H):
                    score[l, h] += sum(float(patterns[i, l, h, q, k]) for k in keys)
                    hit[l, h] += float(hits[h])
    return score / n, hit / n, any_hit / n


def test_repeated_tokens_layout():
    t = repeated_tokens(7, n_seq=4, half=5, bos=9, seed=1)
    assert t.shape == (4, 11) and (t[:, 0] == 9).all() and torch.equal(t[:, 1:6], t[:, 6:])
    assert t[:, 1:].max() < 7
    ids = torch.tensor([3, 5])
    assert set(repeated_tokens(ids, 3, 4, seed=0).flatten().tolist()) <= {3, 5}


@pytest.mark.parametrize("norm", ["LN", "none"])
def test_repeated_scores_equal_float64_loops(norm):
    model = tiny_model(n_layers=2, normalization=norm, n_ctx=13)
    half = 6
    result = repeated_token_scores(model, 10, bos=10, n_seq=5, half=half, seed=3)
    tokens = repeated_tokens(10, 5, half, 10, seed=3)
    pat = float64_patterns(model, tokens)
    defs = {
        "previous_token": lambda i, q, k: q >= 1 and k == q - 1,
        "first_token": lambda i, q, k: q >= 1 and k == 0,
        "duplicate_token": lambda i, q, k: q > half and k == q - half,
        "induction": lambda i, q, k: q > half and k == q - half + 1,
    }
    for name, wanted in defs.items():
        score, hit, any_hit = brute(pat, wanted)
        assert (result.scores[name].double() - score).abs().max() < 1e-5, name
        assert (result.hits[name].double() - hit).abs().max() < 1e-6, name
        assert (result.layer_hits[name].double() - any_hit).abs().max() < 1e-6, name
    assert "BOS" in result.dataset


def test_token_relations_equal_float64_loops():
    model = tiny_model(n_layers=2, normalization="LN")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (6, 10), generator=g)  # small vocabulary: many repeats
    targets = torch.randint(0, 4, (6, 10), generator=g)
    targets[:, :3] = -100
    pat = float64_patterns(model, tokens)
    T, Y = tokens.tolist(), targets.tolist()
    defs = {
        "prev": (previous_token, lambda i, q, k: k == q - 1),
        "first": (first_token, lambda i, q, k: q >= 1 and k == 0),
        "dup": (duplicate_token, lambda i, q, k: k < q and T[i][k] == T[i][q]),
        "ind": (induction, lambda i, q, k: 1 <= k <= q and T[i][k - 1] == T[i][q]),
        "next": (next_output, lambda i, q, k: k <= q and Y[i][q] != -100 and T[i][k] == Y[i][q]),
    }
    out = head_scores(model, tokens, {n: r for n, (r, _) in defs.items()}, targets, batch_size=4)
    for name, (_, wanted) in defs.items():
        score, hit, any_hit = brute(pat, wanted)
        assert (out[name].score.double() - score).abs().max() < 1e-5, name
        assert (out[name].hit.double() - hit).abs().max() < 1e-6, name
        assert (out[name].layer_hit.double() - any_hit).abs().max() < 1e-6, name
    per_pos = head_scores(model, tokens, {"next": next_output}, targets, per_position=True)["next"]
    assert per_pos.score.shape == (2, 3, 10) and per_pos.layer_hit.shape == (2, 10)
    for q in range(10):
        rows = [(i, q) for i in range(6) if Y[i][q] != -100 and Y[i][q] in T[i][: q + 1]]
        if not rows:
            assert per_pos.score[:, :, q].isnan().all()
            continue
        expect = sum(
            pat[i, :, :, q][..., [k for k in range(q + 1) if T[i][k] == Y[i][q]]].sum(-1) for i, q in rows
        ) / len(rows)
        assert (per_pos.score[:, :, q].double() - expect).abs().max() < 1e-5
