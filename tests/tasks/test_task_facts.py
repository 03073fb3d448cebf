"""What each shipped task tells the trainer and the analyses (the facts `analysis/profiles.py` and
the name tables of `analysis/corrupt.py` used to hold): outputs-are-tokens, special tokens, BOS,
the ids random sequences use, output labels, the patching metric, metric directions, loss
positions; and that every shipped task is registered the way a task from outside would be."""

from __future__ import annotations

import json

import pytest
import torch

from toylens.config import TASK_CONFIGS, ClassifyTaskConfig, InductionTaskConfig, LmTaskConfig, SortTaskConfig
from toylens.errors import ToylensError
from toylens.tasks import TASKS, ClassifyTask, InductionTask, LmTask, SortTask, Task, build_task, task_class


def facts(task: Task) -> tuple:
    return task.outputs_are_tokens, task.patch_metric, task.special_tokens(), task.bos_token()


def test_only_the_text_tasks_are_text():
    assert {name: cls.is_text for name, cls in TASKS.items() if name in list(TASK_CONFIGS)[:4]} == {
        "sort": False,
        "induction": False,
        "lm": True,
        "classify": True,
    }


def test_shipped_tasks_are_registered_like_any_other():
    assert list(TASK_CONFIGS)[:4] == ["sort", "induction", "lm", "classify"]
    for name, cls in {"sort": SortTask, "induction": InductionTask, "lm": LmTask, "classify": ClassifyTask}.items():
        assert TASKS[name] is cls and cls.name == name and TASK_CONFIGS[name] is cls.config_class
        assert task_class(cls.config_class()) is cls


def test_sort():
    task = build_task(SortTaskConfig(list_len=4, n_values=10, n_train=300, n_test=50))
    assert facts(task) == (True, "logit_diff", [10], None)
    assert task.boundary_tokens() == [10] and task.baselines() == {}
    assert task.random_token_ids().tolist() == list(range(10)) and task.output_labels() == [str(i) for i in range(10)]
    assert task.loss_positions().tolist() == [4, 5, 6, 7]  # the sorted half
    assert [task.goal(m) for m in ("test/loss", "test/acc", "test/list_acc")] == ["min", "max", "max"]


def test_induction():
    task = build_task(InductionTaskConfig(n_vocab=12, seq_len=40, segment_len=(3, 15), n_train=50, n_test=10))
    assert facts(task) == (True, "neg_loss", [12], 12)
    assert task.random_token_ids().tolist() == list(range(12))
    assert task.loss_positions() is None  # generated on the fly: every position may have a target
    assert [task.goal(m) for m in ("test/copy_loss", "test/copy_acc")] == ["min", "max"]


def test_lm_reads_its_tokenizer(tmp_path):
    doc = tmp_path / "a.txt"
    doc.write_text("abcab aab bca cab abc\n" * 30)
    task = build_task(
        LmTaskConfig(dataset="files", files=[str(doc)], tokenizer="char", n_ctx=8, cache_dir=str(tmp_path / "c"))
    )
    eos, pad = task.tokenizer.eos_id, task.tokenizer.pad_id  # <|endoftext|> and <pad>, added to the 256 bytes
    assert facts(task) == (True, "neg_loss", [eos, pad], eos)
    assert task.boundary_tokens() == [eos, pad]
    assert task.random_token_ids().tolist() == list(range(256))
    assert task.goal("val/ppl") == "min" and task.loss_positions() is None
    pair = task.corrupted_pair(4, seed=0)
    assert (pair.clean[:, 0] == eos).all() and pair.clean[:, 1:].max() < 256


def test_classify_outputs_are_classes(tmp_path):
    rows = [{"text": f"review {i} " + ("good" if i % 2 else "bad"), "label": i % 2} for i in range(50)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = build_task(
        ClassifyTaskConfig(
            dataset="files",
            files=[str(tmp_path / "train.jsonl")],
            tokenizer="bert-base-uncased",
            n_ctx=16,
            cache_dir=str(tmp_path / "c"),
        )
    )
    assert facts(task) == (False, "logit_diff", [0, 102], 102)  # [PAD], [SEP]
    assert task.boundary_tokens() == [0, 101, 102]  # and [CLS], which starts every review
    assert task.output_labels() == ["0", "1"] and task.goal("val/acc") == "max"  # this data names no classes
    assert len(task.random_token_ids()) == 30522 - 2


def test_a_metric_without_a_direction_is_named():
    task = build_task(SortTaskConfig(list_len=4, n_values=10, n_train=300, n_test=50))
    with pytest.raises(ToylensError, match=r"metric 'test/f1': the sort task does not say whether lower or higher"):
        task.goal("test/f1")


def test_a_task_without_corrupted_inputs_says_patching_does_not_apply():
    class Plain(SortTask):
        patch_metric = None
        corrupted_pair = Task.corrupted_pair  # no corrupted inputs

    task = Plain(SortTaskConfig(list_len=4, n_values=10, n_train=300, n_test=50))
    with pytest.raises(ToylensError, match="the sort task has no corrupted inputs, so activation patching does not"):
        task.corrupted_pair(4)
    assert torch.equal(task.random_token_ids(), torch.arange(10))
