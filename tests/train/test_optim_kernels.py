"""Which AdamW kernel training uses (`optim.adamw_kernel`, `StackedAdamW(foreach=...)`), and that
each fast kernel gives the for-loop's weights.

Stated tolerances: on the CPU, the kernel training picks is the for-loop itself and the ensemble's
multi-tensor step does the loop's operations in the loop's order, so both are bit-identical there.
The fused kernel rounds differently (it keeps intermediate values in registers), so after 20 steps
of a tiny model at lr 1e-2 it agrees with the for-loop to `tol(device)` (1e-5 on the CPU, 1e-4 on
CUDA): Adam's update is normalised by sqrt(v), so a last-bit difference in one step moves a weight
by about lr x 1e-7, and 20 steps stay far inside the tolerance unless the kernel is wrong (measured
on the CPU: at most 2.4e-7). The exception is the key bias b_K: attention is invariant to it (it
adds the same amount to every score of a query), so its gradient is float noise, which Adam
normalises into full lr-sized steps in a noise-decided direction; kernels that round differently
move it differently (by 6e-3 here), so it is left out of the non-identical comparisons.
"""

from __future__ import annotations

import torch
from conftest import tiny_config, tiny_model, tol

from toylens import train
from toylens.model import Transformer
from toylens.rundir import RunDir
from toylens.train.ensemble import StackedAdamW
from toylens.train.optim import adamw_kernel, build_optimizer
from toylens.train.state import restore_checkpoint

STEPS = 20


def _compared(weights: dict[str, torch.Tensor]) -> list[str]:
    """The weights whose gradient is not float noise (all but b_K; see the module docstring)."""
    return [name for name in weights if not name.endswith("attn.b_K")]


def test_fused_on_cuda_and_the_for_loop_on_the_cpu():
    assert adamw_kernel(torch.device("cuda")) == {"foreach": False, "fused": True}
    assert adamw_kernel(torch.device("cuda:1"))["fused"]
    assert adamw_kernel(torch.device("cpu")) == {"foreach": False, "fused": False}


def _train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> dict[str, torch.Tensor]:
    """STEPS AdamW steps on a next-token loss over fixed random batches; the final weights."""
    gen = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        tokens = torch.randint(0, 10, (16, 8), generator=gen).to(device)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _for_loop_optimizer(model: torch.nn.Module, cfg, **kernel) -> torch.optim.AdamW:
    opt = build_optimizer(model, cfg)
    for group in opt.param_groups:
        group.update({"foreach": False, "fused": False, **kernel})
    return opt


def test_trainings_adamw_gives_the_for_loops_weights(device):
    cfg = tiny_config(train={"lr": 1e-2, "weight_decay": 0.1}).train
    model = tiny_model(device=device)
    chosen = build_optimizer(model, cfg)
    assert all(g["fused"] == (device.type == "cuda") for g in chosen.param_groups)
    fast = _train_steps(model, chosen, device)
    model = tiny_model(device=device)
    slow = _train_steps(model, _for_loop_optimizer(model, cfg), device)
    for name in slow if device.type == "cpu" else _compared(slow):
        if device.type == "cpu":
            assert torch.equal(fast[name], slow[name]), name
        else:
            torch.testing.assert_close(fast[name], slow[name], rtol=tol(device), atol=tol(device), msg=name)


def test_fused_adamw_agrees_with_the_for_loop(device):
    """The fused kernel itself (CUDA's choice; torch has a CPU one too), against the for-loop."""
    cfg = tiny_config(train={"lr": 1e-2, "weight_decay": 0.1}).train
    model = tiny_model(device=device)
    fused = _train_steps(model, _for_loop_optimizer(model, cfg, fused=True), device)
    model = tiny_model(device=device)
    slow = _train_steps(model, _for_loop_optimizer(model, cfg), device)
    assert any(not torch.equal(fused[n], slow[n]) for n in slow)  # really another kernel
    for name in _compared(slow):
        torch.testing.assert_close(fused[name], slow[name], rtol=tol(device), atol=tol(device), msg=name)


def _stacked_params(device: torch.device) -> dict[str, torch.Tensor]:
    """Three members' stacked weights: a matrix, a bias, an embedding."""
    gen = torch.Generator().manual_seed(3)
    shapes = {"W_in": (3, 5, 7), "b_in": (3, 7), "W_pos": (3, 4, 5)}
    return {n: torch.randn(s, generator=gen).to(device) for n, s in shapes.items()}


def _stacked_run(foreach: bool, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    params = _stacked_params(device)
    wd = torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64, device=device)
    decay = {n: wd if n.startswith("W") else torch.zeros_like(wd) for n in params}
    opt = StackedAdamW(params, decay, (0.9, 0.99), foreach=foreach)
    lr = torch.tensor([1e-3, 1e-2, 3e-2], dtype=torch.float64, device=device)
    for _ in range(STEPS):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        opt.step(lr)
    return params


def test_stacked_adamw_multi_tensor_step_gives_the_loops_weights(device):
    loop, multi, start = _stacked_run(False, device), _stacked_run(True, device), _stacked_params(device)
    for name in loop:
        assert (loop[name] - start[name]).abs().min() > 0  # every weight moved
        if device.type == "cpu":
            assert torch.equal(multi[name], loop[name]), name
        else:
            torch.testing.assert_close(multi[name], loop[name], rtol=tol(device), atol=tol(device), msg=name)


def test_a_checkpoint_keeps_this_processs_kernel(tmp_path):
    """Optimizer param groups are saved with the saving process's kernel flags (fused on a GPU);
    resuming elsewhere must use the resuming process's kernel, with the saved moments."""
    run_dir = train(tiny_config(train={"epochs": 1}), tmp_path, progress=False, device="cpu").run_dir
    model = Transformer(RunDir(run_dir).config().model)
    opt = _for_loop_optimizer(model, tiny_config().train, fused=True)
    restore_checkpoint(RunDir(run_dir), "epoch-0001", model, opt)
    assert all(g["fused"] and not g["foreach"] for g in opt.param_groups)
    assert all(s["exp_avg"].abs().sum() > 0 for s in opt.state.values())
    assert all(s["step"].dtype == torch.float32 and s["step"] == 10 for s in opt.state.values())
