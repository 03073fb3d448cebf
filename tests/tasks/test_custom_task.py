"""A task defined here, outside the package (a config class and a Task subclass), goes through the
whole pipeline once registered: strict config validation, `toylens config fields`, train, analyze
(patching included), the LLC of every checkpoint, and the report. Nothing in toylens names it.

The task is registered for this module only (the fixture removes it again), so that other tests see
the shipped tasks alone."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch
from pydantic import Field

import toylens
from toylens import config as config_module
from toylens.analysis import Settings, analyze, load_result
from toylens.config import TaskConfig, field_docs, load_config, validate_config
from toylens.errors import ToylensError
from toylens.llc import LLCSettings, llc_over_checkpoints
from toylens.rundir import RunDir
from toylens.tasks import (
    IGNORE,
    CorruptedPair,
    Task,
    TaskSpec,
    TensorSplit,
    build_task,
    register_task,
    registry,
    task_class,
)


class ReverseConfig(TaskConfig):
    """Reverse a list: `[x_1..x_n, SEP, x_n..x_1]`, loss on the reversed half."""

    name: Literal["toy-reverse"] = "toy-reverse"
    """Task name."""
    list_len: int = Field(4, ge=2, le=64)
    """Values in each list."""
    n_values: int = Field(8, ge=2, le=1000)
    """Values are 0..n_values-1; SEP is n_values."""
    n_train: int = Field(512, ge=1)
    """Training lists."""
    n_test: int = Field(64, ge=1)
    """Test lists."""


class ReverseTask(Task):
    config_class = ReverseConfig
    select_metric = "test/acc"  # higher is better: the task's metric_goals say so
    outputs_are_tokens = True
    patch_metric = "logit_diff"

    def __init__(self, cfg: ReverseConfig):
        self.cfg, self.n, self.sep = cfg, cfg.list_len, cfg.n_values
        self.spec = TaskSpec(d_vocab=cfg.n_values + 1, d_vocab_out=cfg.n_values, n_ctx=2 * cfg.list_len)
        gen = torch.Generator().manual_seed(0)
        lists = torch.randint(cfg.n_values, (cfg.n_test + cfg.n_train, self.n), generator=gen)
        self.splits = {
            "test": TensorSplit(*self.encode(lists[: cfg.n_test])),
            "train": TensorSplit(*self.encode(lists[cfg.n_test :])),
        }

    def encode(self, lists: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = torch.cat([lists, torch.full((len(lists), 1), self.sep), lists.flip(1)], dim=1)
        tokens, targets = seq[:, :-1], seq[:, 1:].clone()
        targets[:, : self.n] = IGNORE
        return tokens, targets

    def token_labels(self, tokens: torch.Tensor) -> list[str]:
        return ["SEP" if int(t) == self.sep else str(int(t)) for t in tokens]

    def special_tokens(self) -> list[int]:
        return [self.sep]

    def corrupted_pair(self, n: int = 32, seed: int = 0) -> CorruptedPair:
        """One list element changed; the reversed half read as clean; the answer that outputs it changes."""
        gen = torch.Generator().manual_seed(seed)
        clean = self.splits["test"].batch(torch.arange(min(n, len(self.splits["test"]))))
        where = int(torch.randint(self.n, (1,), generator=gen))
        corrupted = clean.tokens.clone()
        shift = torch.randint(1, self.cfg.n_values, (len(corrupted),), generator=gen)  # never the same value
        corrupted[:, where] = (corrupted[:, where] + shift) % self.cfg.n_values
        wrong = clean.targets.clone()
        wrong[:, 2 * self.n - 1 - where] = corrupted[:, where]
        return CorruptedPair(clean.tokens, corrupted, clean.targets, wrong, f"list element {where + 1} changed")


SETTINGS = Settings(n_examples=24, n_patch=6, n_repeated=8, n_pattern_examples=2)
RAW = {
    "name": "reverse",
    "seed": 0,
    "task": {"name": "toy-reverse", "n_train": 512},
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 16, "d_mlp": 32},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.01},
}


@pytest.fixture(scope="module", autouse=True)
def reverse_registered():
    register_task(ReverseTask)
    yield
    del registry.TASKS["toy-reverse"], config_module.TASK_CONFIGS["toy-reverse"]


def test_the_config_validates_strictly_and_is_documented(toylens_main, tmp_path):
    cfg = validate_config(RAW)
    assert isinstance(cfg.task, ReverseConfig) and task_class(cfg.task) is ReverseTask
    assert load_config(RAW, ["task.n_values=5"]).task.n_values == 5
    with pytest.raises(ToylensError, match=r"^config: task.list_len: Input should be a valid integer \(got '4'\)$"):
        validate_config({**RAW, "task": {"name": "toy-reverse", "list_len": "4"}})
    with pytest.raises(ToylensError, match=r"^config: task.n_valeus: unknown key \(did you mean 'n_values'\?\)$"):
        validate_config({**RAW, "task": {"name": "toy-reverse", "n_valeus": 4}})
    with pytest.raises(
        ToylensError,
        match=r"task.name: unknown name 'toy-revers' \(did you mean 'toy-reverse'\?\); "
        r"one of 'sort', 'induction', 'lm', 'classify', 'toy-reverse'",
    ):
        validate_config({**RAW, "task": {"name": "toy-revers"}})
    assert ("task.list_len", "int", "(toy-reverse) Values in each list.") in field_docs()
    assert "task.n_values" in toylens_main("config", "fields").stdout


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory) -> RunDir:
    result = toylens.train(validate_config(RAW), tmp_path_factory.mktemp("runs"), progress=False)
    rows = RunDir(result.run_dir).read_jsonl("metrics.jsonl")[1:]  # epoch 0 (the initialisation) is never "best"
    assert result.best["metric"] == "test/acc" and result.best["value"] == max(r["test/acc"] for r in rows)
    return RunDir(result.run_dir)


def test_train_analyze_llc_report(reverse_run, tmp_path):
    run = reverse_run
    assert run.config().task == ReverseConfig(n_train=512)  # saved and read back from config.yaml
    loaded = toylens.load(run.path, "best")  # the checkpoint's own metadata rebuilds model and task
    assert isinstance(loaded.task, ReverseTask) and loaded.config.task == run.config().task

    written = analyze(run.path, "final", settings=SETTINGS, progress=False)  # final: the last epoch, epoch-0002
    assert "analysis/epoch-0002/patching/logit_diff/head_out_by_pos" in written  # the task's own corruption and metric
    assert "analysis/epoch-0002/head_scores/next_output_by_pos" in written  # outputs are tokens
    grid = load_result(run, "analysis/epoch-0002/patching/logit_diff/resid_pre")
    assert grid.labels["pos"][4] == "SEP" and torch.isfinite(grid.values).all()
    scores = load_result(run, "analysis/epoch-0002/head_scores/repeated")
    assert "r uniform over 8 tokens" in scores.dataset  # SEP is a special token: left out of random sequences

    fast = LLCSettings(
        epsilon=1e-4, gamma=100.0, batch_size=16, chains=2, burnin=3, draws=8, init_batches=2, mala_every=2
    )
    llc = llc_over_checkpoints(run.path, settings=fast, progress=False)["all"]  # the objective reads the loss positions
    assert set(llc) == {"epoch-0000", "epoch-0001", "epoch-0002"}
    assert all(math.isfinite(estimate["llc"]) for estimate in llc.values())

    page = toylens.report([run.path], tmp_path / "report.html", png=False)
    assert {"patching", "llc"} <= set(page.sections) and "toy-reverse" in page.path.read_text()


def test_without_a_patching_metric_patching_does_not_apply(reverse_run, monkeypatch):
    monkeypatch.setattr(ReverseTask, "patch_metric", None)
    assert analyze(reverse_run.path, "epoch-0001", only=["patching"], settings=SETTINGS, progress=False) == []
    monkeypatch.undo()
    assert analyze(
        reverse_run.path, "epoch-0001", only=["patching/logit_diff/resid_pre"], settings=SETTINGS, progress=False
    ) == ["analysis/epoch-0001/patching/logit_diff/resid_pre"]


def test_loss_positions_are_the_reversed_half():
    task = build_task(ReverseConfig(n_train=16, n_test=4))
    assert task.loss_positions().tolist() == [4, 5, 6, 7] and task.goal("test/acc") == "max"
    assert task.random_token_ids().tolist() == list(range(8)) and task.output_labels() == [str(i) for i in range(8)]


def test_a_taken_name_or_a_bad_class_is_refused():
    class Impostor(ReverseTask):
        pass

    with pytest.raises(ToylensError, match="task 'toy-reverse' is already registered by"):
        register_task(Impostor)

    class NoConfig(Task):
        pass

    with pytest.raises(ToylensError, match="NoConfig: set config_class"):
        register_task(NoConfig)

    class Unnamed(TaskConfig):
        name: str = "unnamed"

    class UnnamedTask(ReverseTask):
        config_class = Unnamed

    with pytest.raises(ToylensError, match=r'Unnamed.name: declare the task\'s name as name: Literal\["<name>"\]'):
        register_task(UnnamedTask)
    assert "unnamed" not in registry.TASKS and "unnamed" not in config_module.TASK_CONFIGS
