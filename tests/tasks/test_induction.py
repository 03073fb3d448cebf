"""The induction task: layout, the copy checked by brute force, random offsets, determinism, metrics."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from toylens.config import InductionTaskConfig, load_config
from toylens.errors import ToylensError
from toylens.tasks import IGNORE, build_task

CFG = InductionTaskConfig(n_vocab=12, seq_len=40, segment_len=(3, 15), n_train=500, n_test=100)


def find_copy(seq: list[int], copied: list[bool]) -> tuple[int, int, int]:
    """(src, dst, length) of the copy the mask describes, checked against the tokens by brute force."""
    marked = [p for p, c in enumerate(copied) if c]
    assert marked == list(range(marked[0], marked[-1] + 1)), "one contiguous copied run"
    dst, length = marked[0], len(marked) + 1  # targets x_{d+1}..x_{d+L-1} sit at positions d..d+L-2
    sources = [s for s in range(1, dst - length + 1) if seq[s : s + length] == seq[dst : dst + length]]
    assert sources, "the copied segment occurs earlier in the sequence"
    return sources[0], dst, length


def test_layout_targets_and_copy():
    task = build_task(CFG)
    assert (task.spec.d_vocab, task.spec.d_vocab_out, task.spec.n_ctx) == (13, 12, 40)
    batch = task.splits["train"].batch(torch.arange(200))
    assert batch.tokens.shape == (200, 40) and torch.all(batch.tokens[:, 0] == task.bos)
    assert batch.tokens[:, 1:].max() < 12 and batch.targets.max() < 12 and batch.targets.min() >= 0
    assert torch.equal(batch.tokens[:, 1:], batch.targets[:, :-1]), "next-token targets on every position"
    for tokens, targets, copied in zip(batch.tokens, batch.targets, batch.copied):
        seq = tokens.tolist() + [int(targets[-1])]
        src, dst, length = find_copy(seq, copied.tolist())
        assert 3 <= length <= 15 and src + length <= dst and dst + length <= 41


def test_offsets_and_lengths_vary():
    """Random lengths and offsets: the distance back to the earlier occurrence is not fixed, so
    attending a fixed number of positions back (a positional shortcut) cannot solve the task."""
    batch = build_task(CFG).splits["train"].batch(torch.arange(500))
    copies = [
        find_copy(t.tolist() + [int(y[-1])], c.tolist()) for t, y, c in zip(batch.tokens, batch.targets, batch.copied)
    ]
    offsets = torch.tensor([dst - src for src, dst, _ in copies])
    assert set(length for *_, length in copies) == set(range(3, 16))
    assert len(offsets.unique()) > 20 and offsets.bincount().max() < 0.15 * len(offsets)


def test_deterministic_per_index_and_split():
    task = build_task(CFG)
    a = task.splits["train"].batch(torch.tensor([7, 3, 11]))
    b = build_task(CFG.model_copy(update={"n_train": 20})).splits["train"].batch(torch.tensor([3, 11]))
    assert torch.equal(a.tokens[1:], b.tokens), "sequence i does not depend on n_train or the batch"
    test = task.splits["test"].batch(torch.tensor([7, 3, 11]))
    other_seed = build_task(CFG.model_copy(update={"data_seed": 1})).splits["train"].batch(torch.tensor([7, 3, 11]))
    assert not torch.equal(a.tokens, test.tokens) and not torch.equal(a.tokens, other_seed.tokens)


def test_loss_on_copied_only():
    task = build_task(CFG.model_copy(update={"loss_on": "copied"}))
    batch = task.splits["train"].batch(torch.arange(50))
    assert torch.equal(batch.mask, batch.copied)
    assert torch.all(batch.targets[~batch.copied] == IGNORE)


def test_metrics_on_an_induction_oracle():
    """Logits that copy the token after the earlier occurrence get copy_acc 1; chance elsewhere."""
    task = build_task(CFG)
    batch = task.splits["test"].batch(torch.arange(64))
    logits = torch.zeros(64, 40, 12)
    logits[batch.copied] = torch.nn.functional.one_hot(batch.targets[batch.copied], 12).float() * 50
    sums = task.metric_sums(logits, batch)
    n_copied = int(batch.copied.sum())
    assert sums["copy_acc"] == (float(n_copied), n_copied)
    assert sums["copy_loss"][0] / n_copied < 1e-6
    uniform = torch.log(torch.tensor(12.0))
    expected_loss = (64 * 40 - n_copied) * uniform
    assert sums["loss"][0] == pytest.approx(float(expected_loss), rel=1e-4) and sums["loss"][1] == 64 * 40
    metrics = task.evaluate(_Uniform(12), "test", 32)
    assert metrics["test/copy_loss"] == pytest.approx(float(uniform), rel=1e-5)


class _Uniform(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n, self.p = n, torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*tokens.shape, self.n) + self.p


def test_repeated_tokens_and_labels():
    task = build_task(CFG)
    tokens = task.repeated_tokens(4, 18, seed=1)
    assert tokens.shape == (4, 37) and torch.all(tokens[:, 0] == 12)
    assert torch.equal(tokens[:, 1:19], tokens[:, 19:]) and tokens[:, 1:].max() < 12
    assert task.token_labels(tokens[0])[:2] == ["BOS", str(int(tokens[0, 1]))]


def test_config_errors_are_one_line():
    def error(task: dict) -> str:
        with pytest.raises(ToylensError) as e:
            load_config({**TINY, "task": task})
        return str(e.value)

    msg = error({"name": "induction", "segment_lenn": [2, 4]})
    assert "task.segment_lenn: unknown key" in msg and "'segment_len'" in msg and "\n" not in msg
    assert "need 140 tokens; seq_len is 128" in error({"name": "induction", "segment_len": [10, 70]})
    assert "2 <= shortest" in error({"name": "induction", "segment_len": [1, 4]})
    assert "task.name: unknown name 'inducton' (did you mean 'induction'?)" in error({"name": "inducton"})
