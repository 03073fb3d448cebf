"""Reruns give the same numbers at the default thread count, whatever it is.

Nothing here sets OMP_NUM_THREADS or torch.set_num_threads: the claim is about the code, so the
tests run with the threads a user's process gets (CI: 2 cores). Each asserts that the process has
at least 2 intra-op threads, since with one thread every accumulation is trivially ordered.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY
from torch import nn

from toylens import load, train
from toylens.config import validate_config
from toylens.model.components import Embed
from toylens.rundir import RunDir


@pytest.fixture(autouse=True)
def several_threads():
    assert torch.get_num_threads() >= 2, "determinism tests must run with at least 2 intra-op threads"


def test_embedding_gradient_is_reproducible_and_exact():
    """Many repeated tokens, large enough that the CPU kernels split the work over threads: the
    gradient of W_E is the same bits on every backward and equals a float64 one-hot product."""
    cfg = validate_config({**TINY, "model": {"d_model": 64}}).resolved(52, 50, 64).model
    embed = Embed(cfg)
    nn.init.normal_(embed.W_E, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 52, (256, 64), generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(256, 64, 64, generator=torch.Generator().manual_seed(2))
    grads = []
    for _ in range(20):
        embed.W_E.grad = None
        embed(tokens).backward(upstream)
        grads.append(embed.W_E.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    one_hot = torch.nn.functional.one_hot(tokens.reshape(-1), 52).double()
    reference = one_hot.T @ upstream.reshape(-1, 64).double()
    torch.testing.assert_close(grads[0].double(), reference, rtol=1e-5, atol=1e-5)


def _final(run_dir) -> dict[str, torch.Tensor]:
    return RunDir(run_dir).read_tensors("final.safetensors")[0]


def _rows(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in RunDir(run_dir).read_jsonl("metrics.jsonl")]


def _train_twice(raw: dict, tmp_path) -> tuple:
    runs = []
    for out in ("a", "b"):
        runs.append(train(validate_config(copy.deepcopy(raw)), tmp_path / out, progress=False, device="cpu").run_dir)
    return runs


def _assert_identical(a, b) -> None:
    wa, wb = _final(a), _final(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"final weights differ in {differ}"
    assert _rows(a) == _rows(b)


def test_sort_training_reruns_bit_identical(tmp_path):
    # Batches of 64 lists x 12 positions x d_model 64: past the size where CPU kernels go parallel.
    raw = {
        **TINY,
        "task": {"name": "sort", "list_len": 6, "n_values": 20, "n_train": 1024, "n_test": 128},
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 64, "d_mlp": 128},
        "train": {
            "epochs": 2,
            "batch_size": 64,
            "lr": 0.003,
            "weight_decay": 0.1,
            "l1": {"hooks": ["blocks.0.mlp.hook_post"], "coef": 0.001},
        },
    }
    _assert_identical(*_train_twice(raw, tmp_path))


def test_lm_training_reruns_bit_identical(tmp_path):
    raw = {
        "name": "lm-det",
        "seed": 0,
        "task": {
            "name": "lm",
            "dataset": "wikitext",
            "subset": "wikitext-2-v1",
            "source": "bundled",
            "tokenizer": "char",
            "n_ctx": 64,
            "max_examples": 400,
            "max_eval_examples": 100,
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"n_layers": 2, "n_heads": 2, "d_model": 64, "normalization": "LN"},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.003, "warmup_steps": 5},
    }
    a, b = _train_twice(raw, tmp_path)
    _assert_identical(a, b)
    assert load(a).task.spec.d_vocab > 20  # a real character vocabulary, so tokens repeat in every batch


def test_ensemble_training_reruns_bit_identical(tmp_path):
    from toylens.train.ensemble import train_ensemble

    base = {
        **TINY,
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 64, "d_mlp": 128},
        "task": {"name": "sort", "list_len": 6, "n_values": 20, "n_train": 512, "n_test": 64},
    }
    cfgs = [
        validate_config({**base, "name": f"m{i}", "seed": i, "train": {**TINY["train"], "lr": lr}})
        for i, lr in enumerate((0.003, 0.01))
    ]
    for out in ("a", "b"):
        outcomes = train_ensemble(cfgs, tmp_path / out, device="cpu", progress=False)
        assert all(o.error is None for o in outcomes)
    for cfg in cfgs:
        _assert_identical(tmp_path / "a" / cfg.name, tmp_path / "b" / cfg.name)
