"""Every shipped config validates and resolves against its task, trains a few steps offline and is
analysed once through the `toylens` command; every full config takes five steps as shipped (its
architecture, tokenizer and vocabulary) on the bundled data; every shipped sweep spec expands
(--dry-run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from toylens.config import RunConfig, load_config
from toylens.rundir import RunDir, resolve_one

ROOT = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(ROOT.glob("*.yaml"))
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"induction-1l.yaml", "induction-2l.yaml"} <= names
    for model in ("1l-attn-gpt2", "2l-attn-gpt2", "2l-mlp-gpt2", "1l-attn-bert"):
        for form in ("classify", "lm"):
            assert {f"imdb-{model}-{form}.quick.yaml", f"imdb-{model}-{form}.full.yaml"} <= names
    for model in ("1l-attn-600k", "1l-attn", "2l-attn"):
        assert {f"wikitext-{model}-lm.quick.yaml", f"wikitext-{model}-lm.full.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path):
    cfg = load_config(path)
    assert cfg.name == path.stem, "a config's name is its file name, so runs land where users look"


# A few steps of each config: the same model, tokenizer and task, on a few examples. Language-model
# windows are cut to 16 tokens, since every step builds logits over the tokenizer's vocabulary
# (50,257 for GPT-2); a classifier's logits are its classes, so its reviews keep 32 tokens and 40 of
# them are held out, enough to find reviews with a sentiment word to swap for patching.
SMALL = {
    "lm": ["task.n_ctx=16", "train.batch_size=8"],
    "classify": ["task.max_examples=400", "task.max_eval_examples=4", "task.n_ctx=32", "train.batch_size=64"],
    "sort": ["task.n_train=256", "task.n_test=32"],
    "induction": ["task.n_train=32", "task.n_test=16", "train.log_checkpoints=2"],
}
ROWS = {
    "imdb": ["task.max_examples=1", "task.max_eval_examples=1"],  # language models: one review,
    "wikitext": ["task.max_examples=10", "task.max_eval_examples=10"],
}  # or ten lines


EVERY_RUN_HAS = {
    "attention/task",
    "attention/repeated",
    "head_scores/task",
    "head_scores/repeated",
    "circuits",
    "weight_norms",
    "logit_attribution",
    "logit_lens",
    "ablation/zero",
    "ablation/mean",
    "ablation/resample",
    "summary",
}


def offline_overrides(cfg: RunConfig) -> list[str]:
    """What a shipped config needs to train offline beyond being made small.

    The quick configs read their data with `source: auto`, which falls back to the bundled samples
    when the Hub is unreachable. The full configs read the whole data sets with `source: hub`, so
    that a full run never trains on a sample without saying so: offline they stop with one line
    (`task.hf_path: could not load ...`, after `datasets` has retried for about 30 s), so here they
    train on the bundled samples instead, everything else as shipped. WikiText's full configs read
    the raw text (wikitext-103-raw-v1), of which only the test split is bundled (the test checks
    that this is refused in one line), so they train on the bundled validation split of
    wikitext-103-v1 (the same articles, with rare words replaced by <unk>).
    """
    task = cfg.task
    if getattr(task, "source", None) != "hub":
        return []
    if task.dataset == "wikitext" and task.subset == "wikitext-103-raw-v1":
        return ["task.source=bundled", "task.subset=wikitext-103-v1"]
    return ["task.source=bundled"]


def small_overrides(cfg: RunConfig) -> list[str]:
    rows = ROWS[cfg.task.dataset] if cfg.task.name == "lm" else []
    return [*SMALL[cfg.task.name], *rows, "train.epochs=1", "train.warmup_steps=0"]


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_trains_and_is_analysed_offline(
    path, tmp_path, toylens_main, no_network, session_home, monkeypatch
):
    """`toylens train CONFIG --set ...` (small, offline) then `toylens analyze RUN`: exit 0, no traceback."""
    monkeypatch.setenv("HOME", str(session_home))  # the token cache, shared by the session
    shipped = load_config(path)
    overrides = [*offline_overrides(shipped), *small_overrides(shipped)]
    if path.name.endswith(".full.yaml") and shipped.task.name in ("lm", "classify"):
        assert shipped.task.source == "hub", "a full config changed its source: revisit offline_overrides"
    if "task.subset=wikitext-103-v1" in overrides:  # why the subset changes: no raw training text is shipped
        raw = toylens_main(
            "train",
            path,
            "--out",
            tmp_path,
            "--no-progress",
            "--set",
            "task.source=bundled",
            *(a for o in small_overrides(shipped) for a in ("--set", o)),
        )
        assert raw.exit_code == 2 and "no train or validation split to train on" in raw.stderr, raw.stderr

    train = toylens_main(
        "train", path, "--out", tmp_path, "--no-progress", *(a for o in overrides for a in ("--set", o))
    )
    assert train.exit_code == 0 and "Traceback" not in train.stderr, train.stderr[-3000:]
    if shipped.task.name in ("lm", "classify"):
        assert "bundled sample" in train.stderr
    run = tmp_path / shipped.name
    assert f"run: {run}" in train.stdout
    final = json.loads((run / "summary.json").read_text())["final"]
    assert math.isfinite(final["train/loss"]) and math.isfinite(final["test/loss"])

    text = shipped.task.name in ("lm", "classify")
    analyze = toylens_main(
        "analyze",
        run,
        "--examples",
        4,
        "--patch-pairs",
        2,
        "--no-progress",
        *(["--no-neuron-ablations"] if text else []),
    )
    assert analyze.exit_code == 0 and "Traceback" not in analyze.stderr, analyze.stderr[-3000:]
    files = json.loads((run / "manifest.json").read_text())["files"]
    final = f"analysis/{resolve_one(RunDir(run), 'final').name}/"  # where analyze's default, final, stores results
    results = {"/".join(f.split("/")[2:4]).split(".")[0] for f in files if f.startswith(final)}
    assert EVERY_RUN_HAS <= results, f"missing {EVERY_RUN_HAS - results}"
    assert any(r.startswith("patching/") for r in results)


@pytest.mark.parametrize("spec", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_spec_dry_run(spec, tmp_path, toylens_main):
    result = toylens_main("sweep", spec, "--dry-run", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    members = result.stdout.strip().splitlines()
    assert members and all(line.split()[0].startswith(spec.stem) for line in members)
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


# Five steps of every full config as shipped (architecture, n_ctx, tokenizer, full vocabulary,
# schedule, evaluation), on a few bundled rows. Only the data size and the batch shrink: a
# language model's step builds logits over the whole vocabulary (50,257 GPT-2 ids), which at the
# shipped 64 windows of 256 tokens is minutes per step and several GB on a CPU.
FULL_CONFIGS = sorted(ROOT.glob("*.full.yaml"))
FULL_ROWS = {
    ("lm", "imdb"): ["task.max_examples=20", "task.max_eval_examples=4"],  # about 20 windows; 4 test reviews
    ("lm", "wikitext"): ["task.max_examples=150", "task.max_eval_examples=30"],  # lines, about 30 + 6 windows
    ("classify", "imdb"): ["task.max_examples=24", "task.max_eval_examples=4"],  # reviews: 2 val, 22 train
}
FIVE_STEPS = ["train.max_steps=5", "train.batch_size=2"]


@pytest.mark.slow
@pytest.mark.parametrize("path", FULL_CONFIGS, ids=[p.stem for p in FULL_CONFIGS])
def test_every_full_config_takes_five_steps_on_the_bundled_data(path, tmp_path, no_network, session_home, monkeypatch):
    from toylens import train

    monkeypatch.setenv("HOME", str(session_home))  # the token cache, shared by the session
    shipped = load_config(path)
    overrides = [*offline_overrides(shipped), *FULL_ROWS[shipped.task.name, shipped.task.dataset], *FIVE_STEPS]
    assert "task.source=bundled" in overrides, "a full config no longer reads the Hub: revisit offline_overrides"
    result = train(load_config(path, overrides), tmp_path, device="cpu", progress=False)

    run = RunDir(result.run_dir)
    summary = run.read_json("summary.json")
    assert summary["steps"] == 5 and run.checkpoints()[-1].step == 5
    assert all(math.isfinite(v) for k, v in summary["final"].items() if "/" in k)
    saved = run.config()
    assert saved.model.model_dump() == {**saved.model.model_dump(), **shipped.model.model_dump(exclude_none=True)}
    assert saved.model.n_ctx == shipped.task.n_ctx and saved.task.tokenizer == shipped.task.tokenizer
    n_ids = {"gpt2": 50257, "bert-base-uncased": 30522}[shipped.task.tokenizer]  # the full vocabulary
    assert saved.model.d_vocab == n_ids and saved.task.vocab is None
