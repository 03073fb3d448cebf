"""Corrupted inputs (`Task.corrupted_pair`): minimal changes, and answers that differ (or are
measured) where they should."""

from __future__ import annotations

import torch

from toylens.config import InductionTaskConfig, SortTaskConfig
from toylens.tasks import IGNORE, ClassifyTask, TaskSpec, TensorSplit, build_task


def test_sort_changes_one_token_and_the_answers():
    task = build_task(SortTaskConfig(list_len=6, n_values=20, n_train=100, n_test=50))
    pair = task.corrupted_pair(40, seed=1)
    assert pair.clean.shape == pair.corrupted.shape == (40, 12)
    changed = pair.clean != pair.corrupted
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
    pair = task.corrupted_pair(8, seed=0)
    half = 14
    c, x = pair.clean, pair.corrupted
    assert c.shape == (8, 2 * half + 1) and (c[:, 0] == task.bos).all() and (x[:, 0] == task.bos).all()
    assert torch.equal(c[:, 1 : half + 1], c[:, half + 1 :]) and torch.equal(x[:, half + 1 :], c[:, half + 1 :])
    assert (x[:, 1 : half + 1] != c[:, 1 : half + 1]).all() and x[:, 1:].max() < 16
    measured = (pair.answers != IGNORE).nonzero()[:, 1].unique()
    assert measured.tolist() == list(range(half + 1, 2 * half))
    assert torch.equal(pair.answers[:, half + 1 : 2 * half], c[:, half + 2 :]) and pair.wrong is None


class WordTokenizer:
    """One token per word of a small vocabulary (stands in for the text tasks' tokenizers)."""

    def __init__(self, words):
        self.ids = {w: i for i, w in enumerate(words)}

    def encode(self, text, special_tokens=True):
        return [self.ids[w] for w in text.split()] if all(w in self.ids for w in text.split()) else [0, 0]


class FakeClassify(ClassifyTask):
    """ClassifyTask on a few reviews of a word tokenizer: right-padded with 0, the label at the last real token."""

    eval_splits = ("val",)

    def __init__(self, reviews, labels):
        words = ["<pad>", "the", "film", "was", "good", "bad", "great", "terrible", "plot"]
        self.tokenizer = WordTokenizer(words)
        width = max(len(r.split()) for r in reviews)
        tokens = torch.zeros(len(reviews), width, dtype=torch.long)
        targets = torch.full_like(tokens, IGNORE)
        for i, (review, label) in enumerate(zip(reviews, labels)):
            ids = self.tokenizer.encode(review)
            tokens[i, : len(ids)] = torch.tensor(ids)
            targets[i, len(ids) - 1] = label
        self.splits = {"val": TensorSplit(tokens, targets)}
        self.spec = TaskSpec(d_vocab=len(words), d_vocab_out=2, n_ctx=8)


def test_classify_swaps_one_sentiment_word():
    task = FakeClassify(["the film was good", "the plot", "terrible plot was bad film", "great"], [1, 0, 0, 1])
    pair = task.corrupted_pair(10, seed=0)
    assert pair.clean.shape == (3, 5), "the review without a sentiment word is skipped, padding trimmed"
    words = ["<pad>", "the", "film", "was", "good", "bad", "great", "terrible", "plot"]
    antonym = {"good": "bad", "bad": "good", "great": "terrible", "terrible": "great"}
    for clean, bad, answers, wrong in zip(
        pair.clean.tolist(), pair.corrupted.tolist(), pair.answers.tolist(), pair.wrong.tolist()
    ):
        diff = [i for i, (a, b) in enumerate(zip(clean, bad)) if a != b]
        assert len(diff) == 1 and antonym[words[clean[diff[0]]]] == words[bad[diff[0]]]
        label_at = [i for i, a in enumerate(answers) if a != IGNORE]
        assert len(label_at) == 1 and wrong[label_at[0]] == 1 - answers[label_at[0]]
        assert diff[0] <= label_at[0]
