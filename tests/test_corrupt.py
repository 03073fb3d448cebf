"""Corrupted inputs: minimal changes, and answers that differ (or are measured) where they should."""

from __future__ import annotations

import torch

from toylens.analysis.corrupt import corrupted_pair
from toylens.config import InductionTaskConfig, SortTaskConfig
from toylens.tasks import IGNORE, build_task


def test_sort_changes_one_token_and_the_answers():
    task = build_task(SortTaskConfig(list_len=6, n_values=20, n_train=100, n_test=50))
    pair = corrupted_pair(task, 40, seed=1)
    assert pair.clean.shape == pair.corrupted.shape == (40, 12)
    changed = (pair.clean != pair.corrupted)
    where = changed.nonzero()[:, 1].unique()
    assert len(where) == 1 and where[0] < 6 and changed.sum(1).eq(1).all(), "one token, same position everywhere"
    assert all(len(set(row)) == 6 for row in pair.corrupted[:, :6].tolist()), "still distinct values"
    assert torch.equal(pair.answers, task.splits["test"].batch(torch.arange(40)).targets)
    for clean, bad, wrong in zip(pair.clean.tolist(), pair.corrupted.tolist(), pair.wrong.tolist()):
        for q in range(6, 12):  # the sorter's answer for the corrupted list after reading clean[q]
            prev = -1 if q == 6 else clean[q]
            above = [v for v in bad[:6] if v > prev]
            assert wrong[q] == (min(above) if above else IGNORE)
        assert wrong[:6] == [IGNORE] * 6
    assert ((pair.answers != pair.wrong) & (pair.wrong != IGNORE)).any(1).all(), "every example's answer changes"


def test_repeated_sequences_are_broken_in_the_first_half():
    task = build_task(InductionTaskConfig(n_vocab=16, seq_len=30, segment_len=(3, 10), n_train=10, n_test=10))
    pair = corrupted_pair(task, 8, seed=0)
    half = 14
    c, x = pair.clean, pair.corrupted
    assert c.shape == (8, 2 * half + 1) and (c[:, 0] == task.bos).all() and (x[:, 0] == task.bos).all()
    assert torch.equal(c[:, 1 : half + 1], c[:, half + 1 :]) and torch.equal(x[:, half + 1 :], c[:, half + 1 :])
    assert (x[:, 1 : half + 1] != c[:, 1 : half + 1]).all() and x[:, 1:].max() < 16
    measured = (pair.answers != IGNORE).nonzero()[:, 1].unique()
    assert measured.tolist() == list(range(half + 1, 2 * half))
    assert torch.equal(pair.answers[:, half + 1 : 2 * half], c[:, half + 2 :]) and pair.wrong is None
