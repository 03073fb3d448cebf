"""The text readings in the report and the language-model baseline in its summary, on a tiny
WikiText run with a compact vocabulary: the unigram loss saved at training time equals a float64
count written here, the summary states the loss against it and the head types, and the readings
table shows what `analyze` saved with every token string escaped."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import torch
from report_runs import make_run

import toylens
from toylens.analysis import analyze, load_result
from toylens.config import validate_config
from toylens.report import READERS, build_sections
from toylens.report.collect import collect_runs
from toylens.report.figures import Table
from toylens.report.html import table_html
from toylens.report.text_heads import READINGS
from toylens.rundir import RunDir, resolve_one
from toylens.train import train

LM: dict = {
    "name": "wikitext-tiny",
    "task": {
        "name": "lm",
        "dataset": "wikitext",
        "subset": "wikitext-2-v1",
        "source": "bundled",
        "n_ctx": 24,
        "max_examples": 120,
        "max_eval_examples": 40,
        "vocab": {"max_size": 64},
    },
    "model": {"n_layers": 2, "n_heads": 2, "d_model": 16, "attn_only": True, "normalization": "LN"},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.003},
}


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    raw = json.loads(json.dumps(LM))
    raw["task"]["cache_dir"] = str(tmp_path_factory.mktemp("cache"))
    lm = train(validate_config(raw), out, progress=False).run_dir
    sort = make_run(out, "sort", train={"epochs": 1})
    for run in (lm, sort):
        analyze(run, "final", only=["text_heads", "head_scores", "attention"], progress=False)
    return {"lm": lm, "sort": sort}


def summary_rows(runs: list[Path]) -> dict[str, list]:
    sections = build_sections(collect_runs(runs, READERS))
    table = sections[0].blocks[0]
    assert isinstance(table, Table)
    return {str(row[0]): row[1:] for row in table.rows}


def readings(run: Path):
    return load_result(RunDir(run), f"analysis/{resolve_one(RunDir(run), 'final').name}/{READINGS}")


def test_saved_unigram_baseline_equals_float64_counts(text_runs):
    loaded = toylens.load(text_runs["lm"])
    baselines = RunDir(text_runs["lm"]).read_json("summary.json")["baselines"]
    targets = {
        s: loaded.task.splits[s].batch(torch.arange(len(loaded.task.splits[s]))).targets
        for s in ("train", "val", "test")
    }
    d_out = loaded.model.cfg.d_vocab_out
    counts = torch.zeros(d_out, dtype=torch.float64)
    for t in targets["train"].flatten().tolist():  # add-one counts over the compact ids, <other> included
        counts[t] += 1
    log_p = ((counts + 1) / (counts + 1).sum()).log()
    assert set(baselines) == {"val/unigram_loss", "test/unigram_loss"}
    for split in ("val", "test"):
        assert baselines[f"{split}/unigram_loss"] == pytest.approx(
            float(-log_p[targets[split].flatten()].mean()), rel=1e-12
        )


def test_summary_states_loss_against_unigram_and_head_types(text_runs):
    rows = summary_rows([text_runs["lm"], text_runs["sort"]])
    summary = RunDir(text_runs["lm"]).read_json("summary.json")
    metrics = RunDir(text_runs["lm"]).read_jsonl("metrics.jsonl")
    best = next(r for r in metrics if f"epoch-{r['epoch']:04d}" == summary["best"]["checkpoint"])
    unigram = summary["baselines"]["test/unigram_loss"]
    assert rows["best checkpoint"][0].startswith(summary["best"]["checkpoint"])
    assert rows["test/loss at the best checkpoint"] == [best["test/loss"], None]
    assert rows["baseline test/unigram_loss"] == [unigram, None]
    gap = rows["test/loss at the best checkpoint − unigram (below 0: beats it)"]
    assert gap[0] == pytest.approx(best["test/loss"] - unigram) and gap[1] is None
    th = readings(text_runs["lm"])
    primary = {f"L{l}H{h}": (th.types[l][h] or ["mixed"])[0] for l in range(2) for h in range(2)}
    stated = dict(part.split(": ") for part in rows["head types (readings of text)"][0].split("; "))
    assert {head: kind for kind, heads in stated.items() for head in heads.split(", ")} == primary
    assert rows["head types (readings of text)"][1] is None  # the sorting run has no text readings


def test_runs_without_baselines_show_none(text_runs):
    rows = summary_rows([text_runs["sort"]])
    assert not any(key.startswith(("baseline", "test/loss at the best")) for key in rows)
    assert "head types (readings of text)" not in rows


def test_readings_table_shows_the_saved_values_escaped(text_runs, tmp_path):
    result = toylens.report([text_runs["lm"], text_runs["sort"]], tmp_path / "r.html", png=False)
    assert result.sections.index("text-heads") == result.sections.index("attention") + 1
    page = result.path.read_text()
    section = page[page.index('<section id="sec-text-heads"') :]
    assert "No readings of attention on text" in section[:3000] and ": sort." in section[:3000]
    sections = build_sections(collect_runs([text_runs["lm"]], READERS))
    table = next(s for s in sections if s.id == "text-heads").blocks[0]
    assert isinstance(table, Table) and len(table.rows) == 4
    th = readings(text_runs["lm"])
    row = table.rows[1]  # L0H1
    assert row[0] == "L0H1" and row[1] == (", ".join(th.types[0][1]) or "mixed")
    assert row[2] == pytest.approx(float(th.scores["previous_token"][0, 1]))
    assert row[3] == pytest.approx(float(th.positional_share[0, 1]))
    query, key, share = th.pairs(0, 1)[0]
    assert row[9].startswith(f"{json.dumps(query)} → {json.dumps(key)} {share:.1%}")
    assert table.rows[2][10] == "—"  # skip-trigrams are read for layer 0 only
    # a token string that is markup is shown as text
    th.labels[str(int(th.pair_query[0, 1, 0]))] = "</td><script>&"
    run = collect_runs([text_runs["lm"]], READERS)[0]
    run.extras["analysis"].focus.results[READINGS] = th
    rendered = table_html(next(s for s in build_sections([run]) if s.id == "text-heads").blocks[0])
    assert "<script>" not in rendered and html.escape(json.dumps("</td><script>&")) in rendered
