"""Training batches on the device (`train.batches`): on CUDA read one step ahead into pinned memory
and copied asynchronously, elsewhere read and moved in turn; either way exactly the CPU's tokens.
Stated tolerance: none, the batches are equal (they are integer tokens, copied)."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import TINY

from toylens.config import validate_config
from toylens.tasks import Batch, build_task
from toylens.train.batches import device_batches, read_ahead
from toylens.train.loop import epoch_order


@pytest.fixture(scope="module")
def lm_train_split(tmp_path_factory):
    raw = {
        **TINY,
        "task": {
            "name": "lm",
            "dataset": "wikitext",
            "subset": "wikitext-2-v1",
            "source": "bundled",
            "tokenizer": "char",
            "n_ctx": 32,
            "max_examples": 200,
            "max_eval_examples": 50,
            "cache_dir": str(tmp_path_factory.mktemp("cache")),
        },
    }
    task = build_task(validate_config(raw).task)
    return task.splits[task.train_split]


def test_lm_windows_on_the_device_are_the_cpu_windows(lm_train_split, device):
    order = epoch_order(0, 0, len(lm_train_split))
    keys = list(order.split(16))
    assert len(keys) >= 3
    on_device = list(device_batches(keys, lm_train_split.batch, device))
    assert len(on_device) == len(keys)
    for idx, batch in zip(keys, on_device):
        expected = lm_train_split.batch(idx)
        assert batch.tokens.device.type == device.type and batch.targets.device.type == device.type
        assert torch.equal(batch.tokens.cpu(), expected.tokens) and torch.equal(batch.targets.cpu(), expected.targets)


def test_tuples_holding_a_batch_keep_their_other_items(lm_train_split, device):
    keys = [torch.arange(4), torch.arange(4, 9)]
    items = list(device_batches(keys, lambda idx: (lm_train_split.batch(idx), 0.5, 2.0), device))
    assert [(len(b), w, l1) for b, w, l1 in items] == [(4, 0.5, 2.0), (5, 0.5, 2.0)]
    assert all(isinstance(b, Batch) and b.tokens.device.type == device.type for b, _, _ in items)


def test_read_ahead_keeps_the_order_and_reads_the_next_item_while_the_caller_works():
    handed: list[int] = []
    started = {k: threading.Event() for k in range(5)}

    def read(k: int) -> int:
        assert threading.current_thread() is not threading.main_thread()
        started[k].set()
        return k * 10

    for k, item in enumerate(read_ahead(range(5), read)):
        if k < 4:  # the caller's work on item k: item k + 1 is read meanwhile, without being asked for
            assert started[k + 1].wait(timeout=30)
        handed.append(item)
    assert handed == [0, 10, 20, 30, 40]


def test_read_ahead_raises_a_reads_error_in_the_loop():
    def read(k: int) -> int:
        if k == 2:
            raise ValueError("window 2 is unreadable")
        return k

    got = []
    with pytest.raises(ValueError, match="window 2"):
        for item in read_ahead(range(5), read):
            got.append(item)
    assert got == [0, 1]
