"""Data-restricted LLC: each task's named subsets of the targets keep exactly what they say, the
sampled loss is the loss on those targets only (against a float64 computation), and the CLI stores
the estimates as <restriction>@<subset>, refusing an unknown subset with exit code 2."""

from __future__ import annotations

import pytest
import torch
from conftest import sets, tiny_config

from toylens.config import validate_config
from toylens.errors import ToylensError
from toylens.llc import LLCSettings, run_objective
from toylens.model import Transformer
from toylens.rundir import RunDir
from toylens.tasks import IGNORE, build_task
from toylens.tasks.text import is_punctuation
from toylens.train import train

INDUCTION = {"name": "induction", "n_vocab": 16, "seq_len": 24, "segment_len": [3, 8], "n_train": 64, "n_test": 16}


def test_induction_subsets_are_the_copied_positions_and_the_rest():
    task = build_task(validate_config({"task": INDUCTION}).task)
    batch = task.splits["train"].batch(torch.arange(16))
    copied, uncopied = task.restrict_targets("copied", batch), task.restrict_targets("uncopied", batch)
    assert batch.copied.any() and (~batch.copied).any()
    assert torch.equal(copied.targets != IGNORE, batch.copied) and torch.equal(
        uncopied.targets != IGNORE, ~batch.copied
    )
    assert torch.equal(copied.targets[batch.copied], batch.targets[batch.copied])  # kept targets unchanged
    assert torch.equal(copied.tokens, batch.tokens)


def test_sort_output_i_keeps_one_output_position():
    task = build_task(tiny_config().task)
    batch = task.splits["train"].batch(torch.arange(10))
    assert sorted(task.data_restrictions()) == [f"output{i}" for i in range(4)]
    kept = task.restrict_targets("output2", batch).targets != IGNORE
    assert kept.sum(1).tolist() == [1] * 10 and kept[:, 4 + 2].all()
    assert torch.equal(task.restrict_targets("output2", batch).targets[:, 6], batch.targets[:, 6])


def test_lm_punctuation_keeps_the_punctuation_targets(tmp_path):
    raw = {"name": "lm", "dataset": "wikitext", "subset": "wikitext-2-v1", "source": "bundled", "n_ctx": 32}
    raw |= {"max_examples": 200, "max_eval_examples": 20, "cache_dir": str(tmp_path), "vocab": {"max_size": 300}}
    task = build_task(validate_config({"task": raw}).task)
    assert set(task.data_restrictions()) == {"punctuation", "other"}
    batch = task.splits["train"].batch(torch.arange(8))
    kept = task.restrict_targets("punctuation", batch).targets != IGNORE
    labels = task.token_labels(batch.targets.flatten())
    punct = torch.tensor([is_punctuation(label) for label in labels]).view_as(kept)
    assert kept.any() and torch.equal(kept, punct)
    other = task.restrict_targets("other", batch).targets != IGNORE
    assert torch.equal(other, batch.targets == task.vocab.other_id)


def test_an_unknown_subset_names_the_tasks_subsets():
    task = build_task(validate_config({"task": INDUCTION}).task)
    batch = task.splits["train"].batch(torch.arange(2))
    with pytest.raises(ToylensError, match="bogus.*has copied, uncopied"):
        task.restrict_targets("bogus", batch)
    with pytest.raises(ToylensError, match="has none"):
        build_task(validate_config({"task": {"name": "classify", "dataset": "imdb"}}).task).restrict_targets("x", batch)


@pytest.mark.parametrize("subset", ["copied", "uncopied"])
def test_the_sampled_loss_is_the_loss_on_the_subset_only(subset):
    cfg = validate_config({"task": INDUCTION, "model": {"n_layers": 2, "n_heads": 2, "d_model": 16, "attn_only": True}})
    task = build_task(cfg.task)
    cfg = cfg.resolved(task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx)
    model = Transformer(cfg.model, seed=3)
    objective = run_objective(model, cfg, task, LLCSettings(), subset)
    idx = torch.tensor([[0, 5, 9, 11]])
    params = {k: v.detach().unsqueeze(0) for k, v in model.named_parameters()}
    got = objective.terms(params, idx)["loss"]
    batch = task.splits["train"].batch(idx[0])
    keep = batch.copied if subset == "copied" else ~batch.copied
    with torch.no_grad():
        log_p = model.double()(batch.tokens).log_softmax(-1)
    expected = -log_p.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)[keep].mean()
    whole = run_objective(model.float(), cfg, task, LLCSettings()).terms(params, idx)["loss"]
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(got) - float(whole)) > 1e-3  # a subset, not the whole loss


@pytest.fixture(scope="module")
def induction_run(tmp_path_factory):
    model = {"n_layers": 2, "n_heads": 2, "d_model": 8, "attn_only": True}
    cfg = validate_config({"name": "ind", "task": INDUCTION, "model": model, "train": {"epochs": 1, "batch_size": 16}})
    return train(cfg, tmp_path_factory.mktemp("runs"), progress=False).run_dir


def test_cli_data_restrict_stores_restriction_at_subset(induction_run, toylens_main):
    fast = [*sets(chains=2, draws=4, burnin=2, batch_size=8, init_batches=1), "--checkpoint", "1", "--no-progress"]
    alone = toylens_main("llc", induction_run, "--data-restrict", "copied", *fast)
    assert alone.exit_code == 0, alone.stderr
    run = RunDir(induction_run)
    summary = run.read_json("llc/all@copied/epoch-0001.json")
    assert summary["data"] == "copied" and summary["restriction"] == "all@copied" and summary["settings"]["data"]
    assert sum(summary["params"].values()) == sum(p.numel() for p in Transformer(_model_cfg(run)).parameters())
    heads = toylens_main("llc", induction_run, "--restrict", "l1h0", "--data-restrict", "uncopied", *fast)
    assert heads.exit_code == 0 and run.has("llc/l1h0@uncopied/epoch-0001.json")
    bad = toylens_main("llc", induction_run, "--data-restrict", "bogus", *fast)
    assert bad.exit_code == 2 and "bogus" in bad.stderr and "copied, uncopied" in bad.stderr


def _model_cfg(run: RunDir):
    import toylens

    return toylens.load(run.path, "final").config.model
