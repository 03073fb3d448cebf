"""The compact vocabulary (`task.vocab`): which ids it keeps, text -> compact ids -> token strings,
the <other> id in the loss, the unigram baseline and other_frac (against float64 counts), a saved
run that rebuilds the same mapping, and a TransformerLens export with the same log-probs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import toylens
from toylens.config import LmTaskConfig, validate_config
from toylens.errors import ToylensError
from toylens.export import to_transformer_lens
from toylens.model import Transformer
from toylens.tasks import build_task
from toylens.tasks.tokenizers import load_tokenizer
from toylens.tasks.vocab import OTHER_LABEL, CompactVocab

TEXT = "the cat sat on the mat. the dog sat on the cat. a zebra quietly sat.\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("token-cache"))


def lm_task(tmp_path, tokenizer: str, vocab: dict | None, cache: str):
    doc = tmp_path / "a.txt"
    doc.write_text(TEXT * 40)
    cfg = LmTaskConfig(dataset="files", files=[str(doc)], tokenizer=tokenizer, n_ctx=8, cache_dir=cache, vocab=vocab)
    return build_task(cfg)


def test_fit_keeps_specials_then_most_frequent_ties_by_id():
    tok = load_tokenizer("char")  # specials: <|endoftext|> 256, <pad> 257
    counts = np.zeros(258, dtype=np.int64)
    counts[[ord("a"), ord("b"), ord("c"), ord("d"), ord("e")]] = [5, 9, 5, 1, 5]
    vocab = CompactVocab.fit(counts, tok, max_size=5, min_count=2)
    assert vocab.kept == (256, 257, ord("b"), ord("a"), ord("c"))  # e ties with a and c but has the higher id
    assert vocab.other_id == 5 and vocab.size == 6
    assert vocab.compact(np.array([ord("b"), ord("e"), ord("d"), 256])).tolist() == [2, 5, 5, 0]
    roomy = CompactVocab.fit(counts, tok, max_size=100, min_count=2)
    assert ord("d") not in roomy.kept and len(roomy.kept) == 2 + 4  # d seen once < min_count
    assert CompactVocab.from_json(json.loads(json.dumps(vocab.to_json()))) == vocab
    with pytest.raises(ToylensError, match="not a toylens compact vocabulary"):
        CompactVocab.from_json({"kept": [1]})


def test_config_field_is_strict():
    base = {"name": "lm", "dataset": "files", "files": ["x.txt"]}
    assert validate_config({"task": base}).task.vocab is None  # default: the full vocabulary
    assert validate_config({"task": {**base, "vocab": {"max_size": 64}}}).task.vocab.min_count == 1
    for bad, field in (
        ({"max_size": 4}, "max_size"),
        ({"max_size": "64"}, "max_size"),
        ({"max_size": 64, "x": 1}, "x"),
    ):
        with pytest.raises(ToylensError, match=rf"task\.vocab\.{field}"):
            validate_config({"task": {**base, "vocab": bad}})


def test_text_to_compact_ids_to_token_strings(tmp_path, cache):
    gpt2 = load_tokenizer("gpt2")
    full = lm_task(tmp_path, "gpt2", None, cache)
    task = lm_task(tmp_path, "gpt2", {"max_size": 12, "min_count": 41}, cache)  # tokens seen twice a line
    vocab = task.vocab
    twice = [gpt2.encode(w)[0] for w in (" the", " sat", ".", " cat", " on")]
    assert vocab.kept == (gpt2.eos_id, *sorted(twice, key=lambda i: (-TEXT.count(gpt2.decode([i])), i)))
    assert task.spec.d_vocab == task.spec.d_vocab_out == len(vocab.kept) + 1 == 7
    assert task.bos_token() == 0 and task.special_tokens() == [0]
    ids = task.encode(" the cat sat on the cat.", special_tokens=False)
    assert vocab.other_id not in ids and "".join(task.token_labels(torch.tensor(ids))) == " the cat sat on the cat."
    rare = task.encode(" zebra quietly on the mat", special_tokens=False)
    labels = task.token_labels(torch.tensor(rare))
    assert labels[-3:] == [" on", " the", OTHER_LABEL] and set(labels[:-3]) == {OTHER_LABEL}
    # the splits read the same tokens as without a compact vocabulary, mapped
    for split in ("train", "test"):
        idx = torch.arange(len(task.splits[split]))
        ours, theirs = task.splits[split].batch(idx), full.splits[split].batch(idx)
        assert torch.equal(ours.tokens, torch.from_numpy(vocab.compact(theirs.tokens.numpy())))
        assert torch.equal(ours.targets, torch.from_numpy(vocab.compact(theirs.targets.numpy())))
    assert task.random_token_ids().tolist() == list(range(1, vocab.other_id))  # no end-of-text, no <other>


def test_other_id_in_loss_unigram_and_other_frac(tmp_path, cache):
    task = lm_task(tmp_path, "char", {"max_size": 10}, cache)
    other, d_out = task.vocab.other_id, task.spec.d_vocab_out
    train = task.splits["train"].batch(torch.arange(len(task.splits["train"])))
    test = task.splits["test"].batch(torch.arange(len(task.splits["test"])))
    assert (test.targets == other).any() and (train.targets == other).any()
    # unigram: add-one counts of the compact training targets, <other> one more token, in float64
    counts = torch.bincount(train.targets.flatten(), minlength=d_out).double() + 1
    expected = -(counts / counts.sum()).log()[test.targets.flatten()].mean()
    assert task.unigram_loss("test") == pytest.approx(float(expected), rel=1e-12)
    # the loss scores <other> as the class it is; other_frac counts it
    cfg = validate_config({"task": task.cfg.model_dump(), "model": {"n_layers": 1, "n_heads": 2, "d_model": 16}})
    model = Transformer(cfg.resolved(task.spec.d_vocab, d_out, task.spec.n_ctx).model, seed=0)
    metrics = task.evaluate(model, "test", batch_size=7)
    with torch.no_grad():
        log_p = model(test.tokens).double().log_softmax(-1)
    nll = -log_p.gather(-1, test.targets[..., None]).squeeze(-1)
    assert metrics["test/loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert metrics["test/other_frac"] == pytest.approx(float((test.targets == other).double().mean()), rel=1e-12)
    assert task.goal("test/other_frac") == "min"
    full = lm_task(tmp_path, "char", None, cache)
    batch = full.splits["test"].batch(torch.arange(2))
    assert "other_frac" not in full.metric_sums(torch.zeros(*batch.tokens.shape, full.spec.d_vocab_out), batch)


@pytest.fixture(scope="module")
def compact_run(tmp_path_factory, cache):
    raw = {
        "name": "wikitext-compact",
        "task": {
            "name": "lm",
            "dataset": "wikitext",
            "subset": "wikitext-2-v1",
            "source": "bundled",
            "n_ctx": 32,
            "max_examples": 300,
            "max_eval_examples": 100,
            "cache_dir": cache,
            "vocab": {"max_size": 200, "min_count": 2},
        },
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 16, "attn_only": True},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.003},
    }
    cfg = validate_config(raw)
    result = toylens.train(cfg, out=tmp_path_factory.mktemp("runs"), progress=False)
    return cfg, result


def test_saved_run_rebuilds_the_same_mapping(compact_run):
    cfg, result = compact_run
    fresh = build_task(cfg.task)
    run = toylens.load(result.run_dir)
    assert run.model.cfg.d_vocab == run.model.cfg.d_vocab_out == fresh.vocab.size <= 201
    assert run.task.vocab == fresh.vocab and run.run.task_files() == {"vocab.json": fresh.vocab.to_json()}
    text = " The game was released in Japan in 2010 , and the zebra quietly sat ."
    assert run.task.encode(text) == fresh.encode(text)
    ids = torch.arange(run.task.spec.d_vocab)
    assert run.task.token_labels(ids) == fresh.token_labels(ids) and run.task.token_labels(ids)[-1] == OTHER_LABEL
    assert 0 < result.metrics["test/other_frac"] < 1
    # the saved file decides, not the data: another mapping saved with the run is the one used
    saved = fresh.vocab.to_json()
    saved["kept"] = [*saved["kept"][:1], *reversed(saved["kept"][1:])]
    assert build_task(cfg.task, {"vocab.json": saved}).vocab.kept == tuple(saved["kept"])


def test_a_tampered_mapping_is_refused(compact_run, tmp_path):
    _, result = compact_run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(result.run_dir, copy)
    path = copy / "task" / "vocab.json"
    path.write_text(path.read_text().replace('"kept": [', '"kept": [1, ', 1))
    with pytest.raises(ToylensError, match="vocab.json"):
        toylens.load(copy).task  # noqa: B018


def test_export_of_a_compact_run_gives_the_same_log_probs(compact_run):
    run = toylens.load(compact_run[1].run_dir, device="cpu")
    tokens = run.task.splits["test"].batch(torch.arange(4)).tokens
    assert (tokens == run.task.vocab.other_id).any()
    tl = to_transformer_lens(run.model)
    with torch.no_grad():
        ours, theirs = run.model(tokens).log_softmax(-1), tl(tokens).log_softmax(-1)
    assert theirs.shape[-1] == run.task.vocab.size
    assert (ours - theirs).abs().max() <= 1e-5
    assert math.isfinite(float(ours.sum()))
