"""stacked_forward (many weight sets at once, no vmap) equals the model run once per weight set."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from toylens.model.stacked import stacked_forward


@pytest.mark.parametrize("attn_only,norm,act", [(False, "LN", "gelu"), (False, "none", "relu"), (True, "LN", "relu")])
def test_stacked_forward_equals_one_model_per_row(attn_only, norm, act):
    models = [tiny_model(n_layers=2, attn_only=attn_only, normalization=norm, act_fn=act, seed=s) for s in range(3)]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n, _ in models[0].named_parameters()}
    tokens = torch.randint(0, 11, (3, 4, 8), generator=torch.Generator().manual_seed(0))
    hook = "blocks.1.hook_resid_pre" if attn_only else "blocks.0.mlp.hook_post"
    seen = {}
    with torch.no_grad():
        got = stacked_forward(models[0], params, tokens, {hook: lambda act: seen.setdefault("act", act)})
        for r, model in enumerate(models):
            logits, cache = model.run_with_cache(tokens[r])
            torch.testing.assert_close(got[r], logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(seen["act"][r], cache[hook], atol=1e-5, rtol=1e-5)


def test_stacked_forward_gradients_equal_per_row_gradients():
    models = [tiny_model(seed=s) for s in range(2)]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_(True)
              for n, _ in models[0].named_parameters()}
    tokens = torch.randint(0, 11, (2, 3, 8), generator=torch.Generator().manual_seed(1))
    stacked_forward(models[0], params, tokens).logsumexp(-1).sum().backward()
    for r, model in enumerate(models):
        model(tokens[r]).logsumexp(-1).sum().backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name].grad[r], p.grad, atol=1e-5, rtol=1e-4)


def test_stacked_forward_refuses_a_hook_it_cannot_serve():
    model = tiny_model()
    params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="hook_pattern"):
        stacked_forward(model, params, torch.zeros(1, 2, 8, dtype=torch.long), {"blocks.0.attn.hook_pattern": print})
