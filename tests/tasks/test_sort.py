"""The sorting task: sequence layout, held-out lists, determinism, metrics."""

from __future__ import annotations

import torch

from toylens.config import SortTaskConfig
from toylens.tasks import IGNORE, build_task


def test_layout_and_targets():
    task = build_task(SortTaskConfig(list_len=4, n_values=10, n_train=300, n_test=50))
    batch = task.splits["train"].batch(torch.arange(5))
    assert task.spec.d_vocab == 11 and task.spec.d_vocab_out == 10 and task.spec.n_ctx == 8
    for tokens, targets in zip(batch.tokens, batch.targets):
        x = tokens[:4]
        assert tokens[4] == 10, "SEP"
        assert len(set(x.tolist())) == 4, "no duplicates by default"
        assert torch.equal(targets[4:], x.sort().values), "targets at SEP..end are sorted x"
        assert torch.equal(tokens[5:], x.sort().values[:-1]), "teacher-forced outputs"
        assert torch.all(targets[:4] == IGNORE)


def test_test_lists_disjoint_and_deterministic():
    cfg = SortTaskConfig(list_len=3, n_values=12, n_train=500, n_test=100)
    a, b = build_task(cfg), build_task(cfg)
    assert torch.equal(a.splits["train"].tokens, b.splits["train"].tokens)
    train = {tuple(r) for r in a.splits["train"].tokens[:, :3].tolist()}
    test = {tuple(r) for r in a.splits["test"].tokens[:, :3].tolist()}
    assert len(train) == 500 and len(test) == 100 and not train & test
    other = build_task(cfg.model_copy(update={"data_seed": 1}))
    assert not torch.equal(other.splits["train"].tokens, a.splits["train"].tokens)


def test_duplicates_allowed():
    task = build_task(SortTaskConfig(list_len=6, n_values=4, duplicates=True, n_train=800, n_test=50))
    x = task.splits["train"].tokens[:, :6]
    assert any(len(set(r)) < 6 for r in x.tolist())
    assert torch.equal(task.splits["train"].targets[:, 6:], x.sort(dim=1).values)


def test_metrics_on_oracle_and_one_wrong_token():
    task = build_task(SortTaskConfig(list_len=4, n_values=10, n_train=300, n_test=50))
    batch = task.splits["test"].batch(torch.arange(10))
    logits = torch.full((10, 8, 10), -10.0)
    safe = batch.targets.clamp(min=0)
    logits.scatter_(2, safe.unsqueeze(-1), 10.0)
    sums = task.metric_sums(logits, batch)
    assert sums["acc"] == (40.0, 40) and sums["list_acc"] == (10.0, 10)
    logits[0, 5] = 0
    logits[0, 5, (batch.targets[0, 5] + 1) % 10] = 10.0
    sums = task.metric_sums(logits, batch)
    assert sums["acc"] == (39.0, 40) and sums["list_acc"] == (9.0, 10)
    assert task.token_labels(batch.tokens[0])[4] == "SEP"
