"""Text data: the Hub code path on a local Hub-style directory, the offline fallback, local files,
the memory-mapped token cache (reuse, keys, crash safety), and one-line errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY

from toylens.config import ClassifyTaskConfig, LmTaskConfig, load_config
from toylens.errors import ToylensError
from toylens.tasks import build_task
from toylens.tasks.tokenizers import TextTokenizer, load_tokenizer

WORDS = "the a movie film was great awful plot actor scene good bad very not fun dull".split()


def sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n)) + "."


def write_hub_dir(root: Path, n: dict[str, int]) -> Path:
    """A dataset directory laid out like a Hub repo: README.md with `configs:` and parquet shards,
    one config `plain_text` with text + label, one `lines` with text only."""
    rng = np.random.default_rng(0)
    for split, count in n.items():
        texts = [sentence(rng, int(rng.integers(3, 30))) for _ in range(count)]
        labels = [i % 3 for i in range(count)]
        (root / "plain_text").mkdir(parents=True, exist_ok=True)
        (root / "lines").mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.table({"text": texts, "label": labels}), root / "plain_text" / f"{split}-00000-of-00001.parquet"
        )
        pq.write_table(pa.table({"text": texts}), root / "lines" / f"{split}-00000-of-00001.parquet")
    configs = []
    for config in ("plain_text", "lines"):
        files = "".join(f"  - split: {s}\n    path: {config}/{s}-00000-of-00001.parquet\n" for s in n)
        configs.append(f"- config_name: {config}\n  data_files:\n{files}")
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n# test dataset\n")
    return root


def test_hub_layout_directory_is_loaded_with_datasets(tmp_path, caplog):
    hub = write_hub_dir(tmp_path / "hub", {"train": 60, "validation": 20, "test": 30})
    cfg = ClassifyTaskConfig(
        dataset="hf",
        hf_path=str(hub),
        subset="plain_text",
        tokenizer="char",
        n_ctx=64,
        cache_dir=str(tmp_path / "cache"),
    )
    with caplog.at_level("INFO", logger="toylens"):
        task = build_task(cfg)
    assert "local dataset directory" in caplog.text
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 60, "val": 20, "test": 30}
    assert task.spec.d_vocab_out == 3 and task.spec.d_vocab == 258
    lm = build_task(
        LmTaskConfig(
            dataset="hf",
            hf_path=str(hub),
            subset="lines",
            tokenizer="char",
            n_ctx=16,
            cache_dir=str(tmp_path / "cache"),
        )
    )
    text = "".join(pq.read_table(hub / "lines" / "train-00000-of-00001.parquet").column("text").to_pylist())
    # Each row is a document: its bytes, then end-of-text (256); all of it in windows of 16.
    assert len(lm.splits["train"]) == (len(text.encode()) + 60 - 1) // 16


def test_imdb_name_with_local_hub_directory(tmp_path):
    """`dataset: imdb` goes through `datasets` under the name given in hf_path (here a local copy)."""
    hub = write_hub_dir(tmp_path / "imdb", {"train": 40, "test": 10})
    task = build_task(
        ClassifyTaskConfig(
            dataset="imdb", hf_path=str(hub), tokenizer="char", n_ctx=32, cache_dir=str(tmp_path / "cache")
        )
    )
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 36, "val": 4, "test": 10}


def test_offline_falls_back_to_bundled_sample(tmp_path, no_network, caplog):
    cfg = LmTaskConfig(
        dataset="wikitext", subset="wikitext-2-v1", tokenizer="char", n_ctx=256, cache_dir=str(tmp_path / "cache")
    )
    with caplog.at_level("INFO", logger="toylens"):
        task = build_task(cfg)
    assert "bundled sample of Salesforce/wikitext (wikitext-2-v1)" in caplog.text and "unreachable" in caplog.text
    # Trained on the bundled validation split: char tokens are its bytes, lines are not documents
    # (no end-of-text), and validation is its last 10%.
    import toylens

    bundled = Path(toylens.__file__).parent / "data/wikitext/wikitext-2-v1/validation.jsonl.gz"
    n = sum(
        len(json.loads(line)["text"].encode())
        for line in gzip.open(bundled, "rt", encoding="utf-8").read().split("\n")[:-1]
    )
    val = int(n * 0.1)
    assert (len(task.splits["train"]), len(task.splits["val"])) == ((n - val - 1) // 256, (val - 1) // 256)
    with pytest.raises(ToylensError, match="no train or validation split.*wikitext-103-v1"):
        build_task(cfg.model_copy(update={"subset": "wikitext-103-raw-v1"}))


def test_source_hub_fails_in_one_line_when_unreachable(tmp_path):
    cfg = ClassifyTaskConfig(source="hub", hf_path=str(tmp_path / "nowhere"), cache_dir=str(tmp_path))
    with pytest.raises(ToylensError, match=r"^task.hf_path: could not load") as e:
        build_task(cfg)
    assert "\n" not in str(e.value)


def test_cache_is_reused_and_memory_mapped(tmp_path, monkeypatch):
    files = tmp_path / "corpus"
    files.mkdir()
    for i in range(3):
        (files / f"doc{i}.txt").write_text(f"document {i}\nsecond line of {i}\n")
    cfg = LmTaskConfig(
        dataset="files",
        files=[str(files / "*.txt")],
        tokenizer="gpt2",
        n_ctx=4,
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.2,
        test_fraction=0.2,
    )
    first = build_task(cfg)
    entries = list((tmp_path / "cache" / "tokens").iterdir())
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {"tokens.bin", "meta.json"}

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again although the cache has the split")

    monkeypatch.setattr(TextTokenizer, "encode_batch", refuse)
    second = build_task(cfg)
    assert isinstance(second.splits["train"].tokens, np.memmap)
    idx = torch.arange(len(first.splits["train"]))
    assert torch.equal(first.splits["train"].batch(idx).tokens, second.splits["train"].batch(idx).tokens)
    # The stream is every file's tokens followed by end-of-text, in file order.
    gpt2 = load_tokenizer("gpt2")
    expected = [
        t for i in range(3) for t in gpt2.encode(f"document {i}\n") + gpt2.encode(f"second line of {i}\n") + [50256]
    ]
    assert second.splits["train"].tokens.tolist() == expected


def test_cache_key_follows_data_tokenizer_and_subset(tmp_path):
    doc = tmp_path / "a.txt"
    doc.write_text("one two three four five six seven eight nine ten\n" * 20)
    base = LmTaskConfig(dataset="files", files=[str(doc)], tokenizer="char", n_ctx=8, cache_dir=str(tmp_path / "c"))
    build_task(base)
    build_task(base.model_copy(update={"tokenizer": "gpt2"}))
    build_task(base.model_copy(update={"max_examples": 5}))
    assert len(list((tmp_path / "c" / "tokens").iterdir())) == 3
    doc.write_text("changed text " * 40 + "\n")
    task = build_task(base)
    assert len(list((tmp_path / "c" / "tokens").iterdir())) == 4
    assert bytes(task.splits["train"].tokens[:13].tolist()) == b"changed text "


def test_interrupted_tokenization_leaves_no_entry(tmp_path, monkeypatch):
    doc = tmp_path / "a.txt"
    doc.write_text("\n".join(f"line {i}" for i in range(5000)) + "\n")
    cfg = LmTaskConfig(dataset="files", files=[str(doc)], tokenizer="char", n_ctx=8, cache_dir=str(tmp_path / "c"))
    real = TextTokenizer.encode_batch
    calls = []

    def interrupted(self, texts, special_tokens=True):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, texts, special_tokens)

    monkeypatch.setattr(TextTokenizer, "encode_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_task(cfg)
    assert list((tmp_path / "c" / "tokens").iterdir()) == [], "no half-written entry, no temp dir"
    monkeypatch.setattr(TextTokenizer, "encode_batch", real)
    assert len(build_task(cfg).splits["train"]) > 0


def test_classify_from_jsonl_files_and_missing_label_column(tmp_path):
    rows = [{"text": f"review {i} " + ("good" if i % 2 else "bad"), "label": i % 2} for i in range(50)]
    train = tmp_path / "train.jsonl.gz"
    with gzip.open(train, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = ClassifyTaskConfig(
        dataset="files", files=[str(train)], tokenizer="bert-base-uncased", n_ctx=16, cache_dir=str(tmp_path / "c")
    )
    task = build_task(cfg)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 40, "val": 5, "test": 5}
    with pytest.raises(ToylensError) as e:
        build_task(cfg.model_copy(update={"label_column": "sentiment"}))
    assert str(e.value) == "task.label_column: the train split has no column 'sentiment' (columns: text, label)"
    no_labels = tmp_path / "plain.jsonl"
    no_labels.write_text('{"text": "hi"}\n')
    with pytest.raises(ToylensError, match="task.label_column: the train split has no column 'label'"):
        build_task(cfg.model_copy(update={"files": [str(no_labels)]}))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"files": ["{tmp}/missing.txt"]}, "task.files: {tmp}/missing.txt: no such file"),
        ({"files": ["{tmp}/*.md"]}, "task.files: '{tmp}/*.md' matches no file"),
        ({"files": ["{tmp}/empty.txt"]}, "task: empty corpus"),
        ({"tokenizer": "gtp2"}, "task.tokenizer: unknown tokenizer 'gtp2'"),
        ({"n_ctx": 4096}, "task.n_ctx: the train split has too few tokens for one window of 4097"),
    ],
)
def test_user_errors_are_one_line(tmp_path, change, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "some.txt").write_text("a few words of text\n" * 10)
    raw = {
        "name": "lm",
        "dataset": "files",
        "files": [str(tmp_path / "some.txt")],
        "tokenizer": "char",
        "n_ctx": 8,
        "cache_dir": str(tmp_path / "c"),
    }
    raw.update(
        {k: [v.format(tmp=tmp_path) for v in val] if isinstance(val, list) else val for k, val in change.items()}
    )
    with pytest.raises(ToylensError) as e:
        build_task(LmTaskConfig(**raw))
    assert str(e.value).startswith(message.format(tmp=tmp_path)) and "\n" not in str(e.value)


def test_model_context_shorter_than_task_n_ctx(tmp_path):
    raw = {
        **TINY,
        "task": {"name": "lm", "dataset": "files", "files": ["x.txt"], "n_ctx": 256},
        "model": {**TINY["model"], "n_ctx": 128},
    }
    from toylens.tasks.base import TaskSpec

    cfg = load_config(raw)
    spec = TaskSpec(d_vocab=50257, d_vocab_out=50257, n_ctx=cfg.task.n_ctx)
    with pytest.raises(ToylensError, match=r"^model.n_ctx: 128 is shorter than the task's sequences \(256 tokens\)$"):
        cfg.resolved(spec.d_vocab, spec.d_vocab_out, spec.n_ctx)


def test_config_field_errors_inside_text_tasks():
    def error(task: dict) -> str:
        with pytest.raises(ToylensError) as e:
            load_config({**TINY, "task": task})
        return str(e.value)

    assert "task.tokeniser: unknown key (did you mean 'tokenizer'?)" in error({"name": "lm", "tokeniser": "gpt2"})
    assert "task.label_col: unknown key (did you mean 'label_column'?)" in error({"name": "classify", "label_col": "y"})
    assert "not a WikiText configuration" in error({"name": "lm", "dataset": "wikitext", "subset": "wikitext-3"})
    assert "task.files: dataset 'files' needs at least one file" in error({"name": "lm", "dataset": "files"})


def test_cli_reports_a_missing_data_file_in_one_line(tmp_path):
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "lm.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "task": {
                    "name": "lm",
                    "dataset": "files",
                    "files": [str(tmp_path / "nope.txt")],
                    "cache_dir": str(tmp_path / "c"),
                },
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "toylens.cli", "train", str(cfg), "--out", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: task.files: {tmp_path / 'nope.txt'}: no such file"
    assert not (tmp_path / "runs").exists()
