"""Readings of attention on text and skip-trigrams, against float64 loops and dense matrices written
here, patterns whose answer is known, and a head built by hand to attend to the previous token."""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import pytest
import torch
from conftest import tiny_config, tiny_model
from test_circuits import dense_heads

from toylens.analysis.skip_trigrams import frequent_tokens, top_skip_trigrams
from toylens.analysis.text_heads import (
    THRESHOLDS,
    head_types,
    input_positions,
    is_punctuation,
    read_attention,
    text_heads,
)
from toylens.model import Transformer

# Token labels of the 11-id vocabulary of tiny_model: 8 and 9 are punctuation, 10 a boundary token.
LABELS = [" the", " cat", "Ġsat", " on", " a", " mat", "##s", " dog", " ,", ".", "<|endoftext|>"]
PUNCT, BOUNDARY = {8, 9}, {10}


def labels_of(ids: torch.Tensor) -> list[str]:
    return [LABELS[int(i)] for i in ids]


def float64_patterns(model, tokens):
    m = copy.deepcopy(model).double()
    _, cache = m.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache["pattern", l] for l in range(model.cfg.n_layers)], 1)  # [b, l, h, q, k]


def brute_readings(A, T, valid):
    """Every reading by loops over (example, layer, head, query, key), in float64."""
    B, L, H, P, _ = A.shape
    queries = [(b, q) for b in range(B) for q in range(1, P) if valid[b][q]]
    n = len(queries)
    marks = {
        "first_position": lambda b, q, k: k == 0,
        "bos": lambda b, q, k: k == 0 or T[b][k] in BOUNDARY,
        "punctuation": lambda b, q, k: T[b][k] in PUNCT,
        "previous_token": lambda b, q, k: k == q - 1,
        "duplicate_token": lambda b, q, k: k < q and T[b][k] == T[b][q],
        "induction": lambda b, q, k: 1 <= k <= q and T[b][k - 1] == T[b][q],
    }
    out = {"fraction": {}, "score": {}, "pairs": defaultdict(float), "share": torch.zeros(L, H)}
    for name, mark in marks.items():
        frac = torch.zeros(L, H, dtype=torch.float64)
        defined = 0
        for b, q in queries:
            keys = [k for k in range(q + 1) if mark(b, q, k)]
            defined += bool(keys)
            frac += sum((A[b, :, :, q, k] for k in keys), torch.zeros(L, H, dtype=torch.float64))
        out["fraction"][name], out["score"][name] = frac / n, frac / max(defined, 1)
    for b, q in queries:
        for k in range(q + 1):
            for l in range(L):
                for h in range(H):
                    out["pairs"][(l, h, T[b][q], T[b][k])] += float(A[b, l, h, q, k]) / n
    dist = torch.zeros(L, H, dtype=torch.float64)
    for b, q in queries:
        rows = [A[c, :, :, q] for c in range(B) if valid[c][q]]
        mean = sum(rows) / len(rows)
        dist += 0.5 * (A[b, :, :, q] - mean).abs().sum(-1)
    out["share"] = 1 - dist / n
    out["baseline"] = sum(sum(T[b][k] in PUNCT for k in range(q + 1)) / (q + 1) for b, q in queries) / n
    return out


def test_readings_equal_float64_loops():
    model = tiny_model(n_layers=2, normalization="LN")
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (5, 8), generator=g)
    valid = torch.ones(5, 8, dtype=torch.bool)
    valid[1, 5:], valid[3, 2:] = False, False  # padding after two short reviews
    result = text_heads(
        model, tokens, valid, token_labels=labels_of, boundary=[10], repeated_induction=torch.zeros(2, 3), top=4
    )
    want = brute_readings(float64_patterns(model, tokens), tokens.tolist(), valid.tolist())
    assert result.n_queries == int(valid[:, 1:].sum())
    for name, value in want["fraction"].items():
        assert (result.fractions[name].double() - value).abs().max() < 1e-5, name
    for name in ("previous_token", "duplicate_token", "induction"):
        assert (result.scores[name].double() - want["score"][name]).abs().max() < 1e-5, name
    assert (result.positional_share.double() - want["share"]).abs().max() < 1e-5
    assert result.punctuation_baseline == pytest.approx(want["baseline"], rel=1e-6)
    for l in range(2):
        for h in range(3):
            mine = {(k[2], k[3]): v for k, v in want["pairs"].items() if k[:2] == (l, h)}
            top = sorted(mine.items(), key=lambda kv: -kv[1])[:4]
            got = [(LABELS.index(a), LABELS.index(b), s) for a, b, s in result.pairs(l, h)]
            assert [g[:2] for g in got] == [t[0] for t in top]
            assert [g[2] for g in got] == pytest.approx([t[1] for t in top], abs=1e-6)
            for r, (pair, _) in enumerate(top):  # how often the token pair occurs among (query, key <= query)
                count = sum(
                    tokens[b, q] == pair[0] and tokens[b, k] == pair[1]
                    for b in range(5)
                    for q in range(1, 8)
                    if valid[b, q]
                    for k in range(q + 1)
                )
                assert int(result.pair_count[l, h, r]) == int(count)


def constructed(kind: str, tokens: torch.Tensor) -> torch.Tensor:
    """Patterns [b, 1, 1, q, k] of one known head."""
    b, p = tokens.shape
    A = torch.zeros(b, 1, 1, p, p, dtype=torch.float64)
    for i in range(b):
        for q in range(p):
            if kind == "previous":
                A[i, 0, 0, q, max(q - 1, 0)] = 1
            elif kind == "first":
                A[i, 0, 0, q, 0] = 1
            elif kind == "uniform":
                A[i, 0, 0, q, : q + 1] = 1 / (q + 1)
            else:  # content: the latest earlier copy of the query's token, else itself
                same = [k for k in range(q) if tokens[i, k] == tokens[i, q]]
                A[i, 0, 0, q, same[-1] if same else q] = 1
    return A


def read(kind, tokens, valid=None):
    valid = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid
    A = constructed(kind, tokens)
    return read_attention(
        lambda: [(tokens, valid, A)], tokens, valid, (1, 1), n_vocab=11, boundary=[10], punctuation=[8, 9]
    )


def test_positional_share_of_known_patterns():
    tokens = torch.randint(0, 4, (6, 10), generator=torch.Generator().manual_seed(0))
    for kind in ("previous", "first", "uniform"):  # rows that do not depend on the tokens
        assert float(read(kind, tokens)["positional_share"]) == pytest.approx(1.0, abs=1e-6), kind
    prev = read("previous", tokens)
    assert float(prev["fraction/previous_token"]) == pytest.approx(1.0)
    assert prev["offset_profile"][0, 0, :2].tolist() == pytest.approx([0.0, 1.0])
    content = read("content", tokens)
    A, T = constructed("content", tokens), tokens.tolist()
    want = brute_readings(A, T, [[True] * 10] * 6)["share"]
    assert float(content["positional_share"]) == pytest.approx(float(want), abs=1e-6)
    assert float(content["positional_share"]) < 0.8
    # each row picks one key, so the duplicate fraction is the share of queries with an earlier copy
    dup = sum(any(T[i][k] == T[i][q] for k in range(q)) for i in range(6) for q in range(1, 10)) / 54
    assert float(content["fraction/duplicate_token"]) == pytest.approx(dup) and float(
        content["score/duplicate_token"]
    ) == pytest.approx(1.0)


def test_bos_punctuation_and_first_position_fractions():
    tokens = torch.tensor([[10, 1, 8, 2, 10, 9, 3, 4]])
    first = read("first", tokens)
    assert float(first["fraction/first_position"]) == 1 and float(first["fraction/bos"]) == 1
    uniform = read("uniform", tokens)
    # uniform rows put 1/(q+1) on each key: the punctuation fraction is the baseline itself
    expect = sum(sum(t in (8, 9) for t in tokens[0, : q + 1].tolist()) / (q + 1) for q in range(1, 8)) / 7
    assert float(uniform["fraction/punctuation"]) == pytest.approx(expect)
    assert float(uniform["punctuation_baseline"]) == pytest.approx(expect)
    bos = sum((1 + sum(t == 10 for t in tokens[0, 1 : q + 1].tolist())) / (q + 1) for q in range(1, 8)) / 7
    assert float(uniform["fraction/bos"]) == pytest.approx(bos)


def test_input_positions_and_punctuation():
    targets = torch.tensor([[-100, 1, -100, -100], [2, 3, 4, 5], [-100, -100, -100, -100]])
    assert input_positions(targets).tolist() == [[True, True, False, False], [True] * 4, [False] * 4]
    for label in (",", " .", "Ġ,", "...", " —", "##.", " «", '"'):
        assert is_punctuation(label), label
    for label in (" the", "<other>", "", " ", "'s", "<|endoftext|>", "[CLS]", " 3"):
        assert not is_punctuation(label), label


def test_head_types_follow_the_thresholds():
    t = THRESHOLDS
    grid = lambda *v: torch.tensor([list(v)])  # noqa: E731  one layer, a head per value
    fractions = {"bos": grid(0.1, 0.1, t["BOS"], 0.0, 0.0, 0.0), "punctuation": grid(0.0, 0.0, 0.0, 0.35, 0.35, 0.0)}
    scores = {
        "previous_token": grid(t["previous-token"], 0.39, 0, 0, 0, 0),
        "duplicate_token": grid(0, 0.5, 0, 0, 0, 0),
    }
    share = grid(0.95, 0.6, 0.6, 0.6, 0.6, 0.2)
    induction = grid(0, 0, 0, 0, 0, 0.7)
    types = head_types(fractions, scores, share, induction, punctuation_baseline=0.15)[0]
    assert types == [
        ["previous-token", "positional"],
        ["duplicate-token"],
        ["BOS"],
        ["punctuation"],  # 0.35 >= 0.3 and >= 2 x 0.15
        ["punctuation"],
        ["induction", "content"],
    ]
    # the same punctuation share is no punctuation head when uniform attention would give as much
    assert head_types(fractions, scores, share, induction, punctuation_baseline=0.2)[0][3] == []


def previous_token_model() -> Transformer:
    """One attention-only layer whose head 0 attends to the previous position and head 1 to position 0,
    through the positional embeddings alone (one-hot positions)."""
    n_ctx = 8
    cfg = tiny_config(
        model={"n_layers": 1, "n_heads": 2, "d_model": 16, "d_head": n_ctx, "attn_only": True, "n_ctx": n_ctx}
    )
    model = Transformer(cfg.resolved(d_vocab=11, d_vocab_out=11, n_ctx=n_ctx).model, seed=0)
    with torch.no_grad():
        model.embed.W_E.zero_()
        model.pos_embed.W_pos.copy_(torch.eye(n_ctx, 16))
        attn = model.blocks[0].attn
        eye, shift = torch.eye(16, n_ctx), torch.eye(16, n_ctx).roll(1, dims=1)  # position j -> key j + 1
        attn.W_Q[0].copy_(eye * 30), attn.W_K[0].copy_(shift)  # query i meets key j where j + 1 = i
        attn.W_Q[1].copy_(torch.ones(16, n_ctx) * 30), attn.W_K[1].copy_(eye[:, :1].expand(16, n_ctx) * 0)
        attn.W_K[1][0].fill_(1)  # only position 0 has a key along every query direction
    return model


def test_hand_built_previous_token_head_is_typed():
    model = previous_token_model()
    g = torch.Generator().manual_seed(2)
    tokens = torch.stack([torch.randperm(10, generator=g)[:8] for _ in range(4)])  # no repeats: no duplicates
    result = text_heads(
        model, tokens, torch.ones_like(tokens, dtype=torch.bool), token_labels=labels_of, boundary=[10],
        repeated_induction=torch.zeros(1, 2),
    )  # fmt: skip
    assert float(result.scores["previous_token"][0, 0]) > 0.99
    assert result.types[0][0] == ["previous-token", "positional"] and result.primary(0, 0) == "previous-token"
    assert float(result.fractions["first_position"][0, 1]) > 0.99 and result.primary(0, 1) == "BOS"
    assert float(result.positional_share.min()) > 0.99


def test_frequent_tokens_order():
    tokens = torch.tensor([[5, 3, 3, 7, 5, 9], [3, 1, 1, 2, 2, 2]])
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[1, 3:] = False  # the three 2s are padding
    assert frequent_tokens(tokens, valid, 10).tolist() == [3, 1, 5, 7, 9]  # 3 x3, then ties by id
    assert frequent_tokens(tokens, valid, 2).tolist() == [3, 1]


@pytest.mark.parametrize("norm", ["LN", "none"])
def test_skip_trigrams_equal_dense_float64(norm):
    model = tiny_model(n_layers=2, normalization=norm)
    P, qk, ov, W_U = dense_heads(model)
    E = P["embed.W_E"]
    cand, outs = torch.tensor([3, 1, 7, 0, 5, 9]), torch.tensor([2, 4, 6, 8, 1])
    got = top_skip_trigrams(model, cand, outs, n_sources=3, n_outputs=2, n_destinations=2, chunk=4)
    d_head = model.cfg.d_head
    for h in range(3):
        OV = E[cand] @ ov[0][h] @ W_U[:, outs]  # [source, output]
        OV = OV - OV.mean(1, keepdim=True)
        QK = E[cand] @ qk[0][h] @ E[cand].T / math.sqrt(d_head)  # [destination, source]
        QK = QK - QK.mean(1, keepdim=True)
        best, src = OV.max(1).values.sort(descending=True)
        assert got["sources"][h].tolist() == cand[src[:3]].tolist()
        assert got["source_scores"][h].double().tolist() == pytest.approx(best[:3].tolist(), abs=1e-5)
        for r, s in enumerate(src[:3].tolist()):
            o = OV[s].sort(descending=True)
            assert got["outputs"][h, r].tolist() == outs[o.indices[:2]].tolist()
            assert got["output_scores"][h, r].double().tolist() == pytest.approx(o.values[:2].tolist(), abs=1e-5)
            d = QK[:, s].sort(descending=True)
            assert got["destinations"][h, r].tolist() == cand[d.indices[:2]].tolist()
            assert got["destination_scores"][h, r].double().tolist() == pytest.approx(d.values[:2].tolist(), abs=1e-5)


def test_classify_run_reads_reviews_without_padding_and_outputs_classes(tmp_path):
    """End to end on a tiny review classifier: only real review positions are counted (never the
    padding after a short review's label), and the skip-trigrams' outputs are the two classes."""
    import json

    from toylens.analysis import analyze, load_result
    from toylens.config import validate_config
    from toylens.rundir import RunDir, load
    from toylens.train import train

    words = ["good", "bad", "movie", "fun", ",", ".", "the", "plot", "!"]
    g = torch.Generator().manual_seed(0)
    rows = [
        {"text": " ".join(words[int(i)] for i in torch.randint(0, 9, (3 + n % 9,), generator=g)), "label": n % 2}
        for n in range(60)
    ]
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "name": "reviews",
        "task": {
            "name": "classify",
            "dataset": "files",
            "files": [str(tmp_path / "reviews.jsonl")],
            "tokenizer": "bert-base-uncased",
            "n_ctx": 16,
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 16, "attn_only": True},
        "train": {"epochs": 1, "batch_size": 16},
    }
    run = train(validate_config(raw), tmp_path / "runs", progress=False).run_dir
    written = analyze(run, "final", only=["text_heads"], progress=False)
    th, st = (load_result(RunDir(run), rel) for rel in written)
    val = load(run).task.splits["val"]
    batch = val.batch(torch.arange(len(val)))
    label_pos = (batch.targets != -100).nonzero()[:, 1]  # one label per review, at its last real token
    assert (batch.tokens == 0).any()  # some reviews are padded
    assert th.n_examples == len(val) and th.n_queries == int(label_pos.sum())  # positions 1..label
    # [CLS] sits at position 0; [SEP] (a boundary token too) at each label position, which attends to itself
    assert (batch.tokens[:, 0] == 101).all() and (th.fractions["bos"] > th.fractions["first_position"]).all()
    assert st.whole_model and st.n_output_candidates == 2
    assert set(st.outputs.flatten().tolist()) <= {0, 1} and set(st.output_labels.values()) <= {"0", "1"}
    assert set(st.token_labels.values()) <= set(words) | {"[CLS]", "[SEP]"}
