"""stacked_forward (many weight sets at once, no vmap) equals the model run once per weight set."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, tol

from toylens.model.stacked import _cut, stacked_forward


@pytest.mark.parametrize("attn_only,norm,act", [(False, "LN", "gelu"), (False, "none", "relu"), (True, "LN", "relu")])
def test_stacked_forward_equals_one_model_per_row(attn_only, norm, act, device):
    models = [
        tiny_model(n_layers=2, attn_only=attn_only, normalization=norm, act_fn=act, seed=s, device=device)
        for s in range(3)
    ]
    params = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
        for n, _ in models[0].named_parameters()
    }
    tokens = torch.randint(0, 11, (3, 4, 8), generator=torch.Generator().manual_seed(0)).to(device)
    hook = "blocks.1.hook_resid_pre" if attn_only else "blocks.0.mlp.hook_post"
    seen = {}
    with torch.no_grad():
        got = stacked_forward(models[0], params, tokens, {hook: lambda act: seen.setdefault("act", act)})
        for r, model in enumerate(models):
            logits, cache = model.run_with_cache(tokens[r])
            torch.testing.assert_close(got[r], logits, atol=tol(device), rtol=tol(device))
            torch.testing.assert_close(seen["act"][r], cache[hook], atol=tol(device), rtol=tol(device))


def test_stacked_forward_gradients_equal_per_row_gradients(device):
    models = [tiny_model(seed=s, device=device) for s in range(2)]
    params = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_(True)
        for n, _ in models[0].named_parameters()
    }
    tokens = torch.randint(0, 11, (2, 3, 8), generator=torch.Generator().manual_seed(1)).to(device)
    stacked_forward(models[0], params, tokens).logsumexp(-1).sum().backward()
    for r, model in enumerate(models):
        model(tokens[r]).logsumexp(-1).sum().backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name].grad[r], p.grad, atol=tol(device), rtol=10 * tol(device))


def test_stacked_forward_refuses_a_hook_it_cannot_serve():
    model = tiny_model()
    params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="hook_pattern"):
        stacked_forward(model, params, torch.zeros(1, 2, 8, dtype=torch.long), {"blocks.0.attn.hook_pattern": print})


# The last layer narrows to the logits' positions as early as the hooks recorded in it allow.
@pytest.mark.parametrize(
    "attn_only,hook,cut",
    [
        (False, None, 0),
        (False, "blocks.0.mlp.hook_post", 0),
        (False, "blocks.1.hook_resid_mid", 1),
        (False, "blocks.1.mlp.hook_post", 2),
        (False, "blocks.1.hook_mlp_out", 3),
        (True, None, 0),
        (True, "blocks.1.hook_resid_pre", 0),
        (True, "blocks.1.hook_attn_out", 3),
    ],
)
def test_stacked_forward_at_some_positions_equals_the_full_forward(attn_only, hook, cut, device):
    models = [tiny_model(n_layers=2, attn_only=attn_only, act_fn="relu", seed=s, device=device) for s in range(2)]
    last = "blocks.1."
    recorded = [hook[len(last) :]] if hook and hook.startswith(last) else []
    assert _cut(attn_only, recorded) == cut
    positions = torch.tensor([2, 5, 6], device=device)
    tokens = torch.randint(0, 11, (2, 3, 8), generator=torch.Generator().manual_seed(2)).to(device)
    out = []
    for at in (None, positions):
        params = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_(True)
            for n, _ in models[0].named_parameters()
        }
        seen = {}
        logits = stacked_forward(
            models[0], params, tokens, {hook: lambda act, seen=seen: seen.setdefault("act", act)} if hook else {}, at
        )
        if at is None:
            logits = logits[:, :, positions]
        grads = torch.autograd.grad(
            logits.logsumexp(-1).sum() + (seen["act"].square().sum() if hook else 0), list(params.values())
        )
        out.append((logits, seen.get("act"), grads))
    (full, act_full, g_full), (part, act_part, g_part) = out
    torch.testing.assert_close(part, full, atol=tol(device), rtol=tol(device))
    if hook:
        torch.testing.assert_close(act_part, act_full, atol=tol(device), rtol=tol(device))
    for a, b in zip(g_part, g_full):
        torch.testing.assert_close(a, b, atol=tol(device), rtol=10 * tol(device))
