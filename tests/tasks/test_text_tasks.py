"""The lm and classify tasks against independent references: the bundled texts tokenized here,
pads that cannot change a prediction, a brute-force unigram baseline, and training end to end."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY

import toylens
from toylens.config import ClassifyTaskConfig, LmTaskConfig, validate_config
from toylens.model import Transformer
from toylens.tasks import IGNORE, build_task
from toylens.tasks.tokenizers import load_tokenizer

DATA = Path(toylens.__file__).parent / "data"


def bundled_rows(rel: str) -> list[dict]:
    return [json.loads(x) for x in gzip.open(DATA / rel, "rt", encoding="utf-8").read().split("\n")[:-1]]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture(scope="module")
def imdb_bert(cache):
    return build_task(
        ClassifyTaskConfig(tokenizer="bert-base-uncased", n_ctx=48, source="bundled", max_examples=300, cache_dir=cache)
    )


def test_classify_targets_truncation_and_splits(imdb_bert):
    task, bert = imdb_bert, load_tokenizer("bert-base-uncased")
    assert task.spec.d_vocab == 30522 and task.spec.d_vocab_out == 2 and task.class_names == ["neg", "pos"]
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 270, "val": 30, "test": 2000}
    train_rows, val_rows = task.splits["train"].rows, task.splits["val"].rows
    assert not set(train_rows) & set(val_rows) and len(set(train_rows) | set(val_rows)) == 300
    test = bundled_rows("imdb/plain_text/test.jsonl.gz")
    batch = task.splits["test"].batch(torch.arange(40))
    for i in range(40):
        ids = bert.encode(test[i]["text"])
        expected = ids if len(ids) <= 48 else ids[:47] + [102]  # truncated, closing [SEP] kept
        n = len(expected)
        assert batch.tokens[i, :n].tolist() == expected and torch.all(batch.tokens[i, n:] == 0)  # [PAD]
        assert batch.targets[i, n - 1] == test[i]["label"] and (batch.targets[i] != IGNORE).sum() == 1


def test_pads_never_change_the_prediction(cache):
    """Logits at each review's label position are the same padded in a batch and run alone."""
    task = build_task(
        ClassifyTaskConfig(
            tokenizer="bert-base-uncased", n_ctx=400, source="bundled", max_examples=300, cache_dir=cache
        )
    )  # same tokens, from the cache
    cfg = validate_config({**TINY, "task": {"name": "classify"}, "model": {"n_layers": 2, "n_heads": 2, "d_model": 16}})
    model = Transformer(cfg.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx).model, seed=0).eval()
    batch = task.splits["val"].batch(torch.arange(12))
    lengths = (batch.targets != IGNORE).int().argmax(dim=1) + 1
    assert lengths.min() < batch.tokens.shape[1], "the batch has padded reviews"
    with torch.no_grad():
        padded = model(batch.tokens)
        for i, n in enumerate(lengths.tolist()):
            alone = model(batch.tokens[i : i + 1, :n])
            torch.testing.assert_close(padded[i, n - 1], alone[0, -1], rtol=1e-5, atol=1e-5)


def test_lm_windows_are_the_tokenized_stream(cache):
    task = build_task(
        LmTaskConfig(dataset="wikitext", subset="wikitext-2-v1", source="bundled", n_ctx=64, cache_dir=cache)
    )
    gpt2 = load_tokenizer("gpt2")
    rows = bundled_rows("wikitext/wikitext-2-v1/validation.jsonl.gz")
    stream = [t for r in rows for t in gpt2.encode(r["text"])]  # lines of one text: no end-of-text
    n_val = int(len(stream) * 0.1)
    train, val = task.splits["train"], task.splits["val"]
    assert len(train) == (len(stream) - n_val - 1) // 64 and len(val) == (n_val - 1) // 64
    batch = train.batch(torch.tensor([0, 1, len(train) - 1]))
    assert batch.tokens[0].tolist() == stream[:64] and batch.targets[0].tolist() == stream[1:65]
    assert batch.tokens[1].tolist() == stream[64:128]
    assert val.batch(torch.tensor([0])).tokens[0].tolist() == stream[len(stream) - n_val : len(stream) - n_val + 64]
    test_rows = bundled_rows("wikitext/wikitext-2-v1/test.jsonl.gz")
    first_test = [t for r in test_rows[:40] for t in gpt2.encode(r["text"])][:64]
    assert task.splits["test"].batch(torch.tensor([0])).tokens[0].tolist() == first_test
    assert task.token_labels(batch.tokens[0][:3]) == [gpt2.decode([t]) for t in stream[:3]]


def test_unigram_baseline_and_perplexity_against_brute_force(tmp_path):
    doc = tmp_path / "a.txt"
    doc.write_text("abcab aab bca cab abc\n" * 30)
    task = build_task(
        LmTaskConfig(dataset="files", files=[str(doc)], tokenizer="char", n_ctx=8, cache_dir=str(tmp_path / "c"))
    )
    train = task.splits["train"].batch(torch.arange(len(task.splits["train"]))).targets.flatten().tolist()
    test = task.splits["test"].batch(torch.arange(len(task.splits["test"]))).targets.flatten().tolist()
    total = len(train) + 258
    expected = -sum(math.log((train.count(t) + 1) / total) for t in test) / len(test)
    assert task.unigram_loss("test") == pytest.approx(expected, rel=1e-12)
    assert task.finalize({"loss": 2.0})["ppl"] == pytest.approx(math.exp(2.0))
    assert task.select_metric == "val/loss" and task.eval_splits == ("val", "test")


def test_evaluation_batches_keep_gpt2_logits_small_and_averages_unchanged(cache, monkeypatch):
    """A large eval batch over a 50,257-token vocabulary is cut to the logits budget; same averages."""
    from toylens.config import ModelConfig
    from toylens.tasks import base

    task = build_task(
        LmTaskConfig(
            dataset="wikitext", subset="wikitext-2-v1", source="bundled", n_ctx=64, max_examples=600, cache_dir=cache
        )
    )
    spec = task.spec
    model = Transformer(
        ModelConfig(n_layers=1, n_heads=1, d_model=8, attn_only=True).resolved(
            spec.d_vocab, spec.d_vocab_out, spec.n_ctx
        ),
        seed=0,
    ).eval()
    seen: list[int] = []
    real = task.metric_sums
    monkeypatch.setattr(task, "metric_sums", lambda logits, batch: seen.append(logits.numel()) or real(logits, batch))
    monkeypatch.setattr(base, "LOGITS_BUDGET", 64 * 50257 * 5)  # at most 5 windows of 64 tokens at once
    big = task.evaluate(model, "val", 10_000)
    assert len(task.splits["val"]) > 5 and max(seen) <= base.LOGITS_BUDGET
    assert big == pytest.approx(task.evaluate(model, "val", 2), rel=1e-6)


def test_trains_end_to_end_and_reloads(tmp_path, cache):
    """A tiny classifier through the unchanged Trainer: val picks the best epoch; load() rebuilds the task."""
    raw = {
        "name": "imdb-tiny",
        "seed": 0,
        "task": {
            "name": "classify",
            "tokenizer": "bert-base-uncased",
            "n_ctx": 48,
            "source": "bundled",
            "max_examples": 300,
            "cache_dir": cache,
        },
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 16, "attn_only": True},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "eval_batch_size": 500},
    }
    result = toylens.train(validate_config(raw), out=tmp_path, progress=False)
    assert result.best["metric"] == "val/acc" and {"val/acc", "test/acc", "val/loss"} <= set(result.metrics)
    run = toylens.load(result.run_dir, checkpoint="best")
    tokens = run.task.splits["test"].batch(torch.arange(2)).tokens
    assert run.model(tokens).shape == (2, tokens.shape[1], 2)
    assert run.task.token_labels(tokens[0][:2])[0] == "[CLS]"


@pytest.mark.slow
def test_small_classifier_clearly_beats_chance(tmp_path, cache):
    """A reduced quick config (1,000 reviews, 128 tokens) is well above 50% on the 2,000 test reviews."""
    raw = {
        "name": "imdb-small",
        "seed": 0,
        "task": {
            "name": "classify",
            "tokenizer": "bert-base-uncased",
            "n_ctx": 128,
            "source": "bundled",
            "max_examples": 1000,
            "cache_dir": cache,
        },
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "attn_only": True, "normalization": "LN"},
        "train": {"epochs": 6, "batch_size": 32, "lr": 0.002, "warmup_steps": 20, "eval_batch_size": 500},
    }
    result = toylens.train(validate_config(raw), out=tmp_path, progress=False)
    best = toylens.load(result.run_dir, checkpoint="best")
    test_acc = best.task.evaluate(best.model, "test", 500)["test/acc"]
    assert test_acc > 0.62, f"test accuracy {test_acc:.3f} at the best-validation epoch"
