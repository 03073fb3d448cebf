"""The transformer: names and shapes pinned, hooks scoped, both attention paths, and logits
checked against an independent float64 loop written here."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model, tol

from toylens.model import Transformer, act_name, hook_names

EXPECTED_HOOKS_2L_LN = [
    "hook_embed",
    "hook_pos_embed",
    *[
        f"blocks.{l}.{h}"
        for l in range(2)
        for h in (
            "hook_resid_pre",
            "hook_q_input",
            "hook_k_input",
            "hook_v_input",
            "ln1.hook_scale",
            "ln1.hook_normalized",
            "attn.hook_q",
            "attn.hook_k",
            "attn.hook_v",
            "attn.hook_attn_scores",
            "attn.hook_pattern",
            "attn.hook_z",
            "attn.hook_result",
            "hook_attn_out",
            "hook_resid_mid",
            "hook_mlp_in",
            "ln2.hook_scale",
            "ln2.hook_normalized",
            "mlp.hook_pre",
            "mlp.hook_post",
            "hook_mlp_out",
            "hook_resid_post",
        )
    ],
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
]


def test_hook_names_pinned():
    model = tiny_model(n_layers=2, normalization="LN")
    assert list(model.hook_dict) == EXPECTED_HOOKS_2L_LN
    assert hook_names(model.cfg) == EXPECTED_HOOKS_2L_LN
    plain = tiny_model(n_layers=1, attn_only=True, normalization="none")
    assert (
        list(plain.hook_dict)
        == hook_names(plain.cfg)
        == [
            "hook_embed",
            "hook_pos_embed",
            "blocks.0.hook_resid_pre",
            *[f"blocks.0.hook_{x}_input" for x in "qkv"],
            *[f"blocks.0.attn.hook_{h}" for h in ("q", "k", "v", "attn_scores", "pattern", "z", "result")],
            "blocks.0.hook_attn_out",
            "blocks.0.hook_resid_post",
            "ln_final.hook_normalized",
        ]
    )


def test_parameter_names_and_shapes_pinned():
    model = tiny_model(n_layers=1, normalization="LN")  # d_vocab 11, out 10, n_ctx 12, d 12, h 3, e 5, mlp 20
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "embed.W_E": (11, 12),
        "pos_embed.W_pos": (12, 12),
        "blocks.0.ln1.w": (12,),
        "blocks.0.ln1.b": (12,),
        "blocks.0.attn.W_Q": (3, 12, 5),
        "blocks.0.attn.W_K": (3, 12, 5),
        "blocks.0.attn.W_V": (3, 12, 5),
        "blocks.0.attn.W_O": (3, 5, 12),
        "blocks.0.attn.b_Q": (3, 5),
        "blocks.0.attn.b_K": (3, 5),
        "blocks.0.attn.b_V": (3, 5),
        "blocks.0.attn.b_O": (12,),
        "blocks.0.ln2.w": (12,),
        "blocks.0.ln2.b": (12,),
        "blocks.0.mlp.W_in": (12, 20),
        "blocks.0.mlp.b_in": (20,),
        "blocks.0.mlp.W_out": (20, 12),
        "blocks.0.mlp.b_out": (12,),
        "ln_final.w": (12,),
        "ln_final.b": (12,),
        "unembed.W_U": (12, 10),
        "unembed.b_U": (10,),
    }
    assert set(model.state_dict()) == set(shapes), "no buffers in the state dict"
    assert model.W_Q.shape == (1, 3, 12, 5) and model.W_O.shape == (1, 3, 5, 12) and model.W_in.shape == (1, 12, 20)


def test_hook_shapes(tokens, device):
    model, tokens = tiny_model(n_layers=2, device=device), tokens.to(device)
    _, cache = model.run_with_cache(tokens, fwd_hooks=[("blocks.0.attn.hook_result", lambda x, hook: None)])
    b, p = tokens.shape
    expect = {
        "hook_embed": (b, p, 12),
        "blocks.1.attn.hook_q": (b, p, 3, 5),
        "blocks.1.attn.hook_z": (b, p, 3, 5),
        "blocks.0.attn.hook_attn_scores": (b, 3, p, p),
        "blocks.0.attn.hook_pattern": (b, 3, p, p),
        "blocks.0.attn.hook_result": (b, p, 3, 12),
        "blocks.1.mlp.hook_post": (b, p, 20),
        "blocks.0.ln1.hook_scale": (b, p, 1),
        "blocks.1.hook_resid_post": (b, p, 12),
    }
    for name, shape in expect.items():
        assert tuple(cache[name].shape) == shape, name
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["resid_post", 1] is cache["blocks.1.hook_resid_post"]
    assert act_name("scale", 1, "ln2") == "blocks.1.ln2.hook_scale"
    torch.testing.assert_close(cache["pattern", 1].sum(-1), torch.ones(b, 3, p, device=device))
    assert torch.all(cache["pattern", 1].triu(1) == 0), "causal"


@pytest.mark.parametrize("attn_only,norm,act", [(True, "none", "relu"), (False, "LN", "gelu"), (False, "none", "relu")])
def test_logits_match_float64_reference(tokens, attn_only, norm, act, device):
    model = tiny_model(n_layers=2, attn_only=attn_only, normalization=norm, act_fn=act)
    ref = reference_forward(model, tokens)  # on the CPU, in float64
    got = model.to(device)(tokens.to(device)).double().cpu()
    torch.testing.assert_close(got, ref, atol=tol(device), rtol=tol(device))


def reference_forward(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Plain float64 loops over batch, positions and heads; shares no code with the model."""
    P = {k: v.double() for k, v in model.state_dict().items()}
    cfg = model.cfg

    def ln(x, pre):
        if cfg.normalization != "LN":
            return x
        x = x - x.mean()
        return x / math.sqrt((x * x).mean() + 1e-5) * P[f"{pre}.w"] + P[f"{pre}.b"]

    out = []
    for seq in tokens:
        resid = [P["embed.W_E"][t] + P["pos_embed.W_pos"][i] for i, t in enumerate(seq)]
        for l in range(cfg.n_layers):
            a = f"blocks.{l}.attn"
            x = [ln(r, f"blocks.{l}.ln1") for r in resid]
            attn_out = [P[f"{a}.b_O"].clone() for _ in resid]
            for h in range(cfg.n_heads):
                q = [xi @ P[f"{a}.W_Q"][h] + P[f"{a}.b_Q"][h] for xi in x]
                k = [xi @ P[f"{a}.W_K"][h] + P[f"{a}.b_K"][h] for xi in x]
                v = [xi @ P[f"{a}.W_V"][h] + P[f"{a}.b_V"][h] for xi in x]
                for i in range(len(x)):
                    s = torch.stack([q[i] @ k[j] / math.sqrt(cfg.d_head) for j in range(i + 1)])
                    w = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
                    z = sum(w[j] * v[j] for j in range(i + 1))
                    attn_out[i] = attn_out[i] + z @ P[f"{a}.W_O"][h]
            resid = [r + o for r, o in zip(resid, attn_out)]
            if not cfg.attn_only:
                m = f"blocks.{l}.mlp"
                act = torch.relu if cfg.act_fn == "relu" else torch.nn.functional.gelu
                resid = [
                    r
                    + act(ln(r, f"blocks.{l}.ln2") @ P[f"{m}.W_in"] + P[f"{m}.b_in"]) @ P[f"{m}.W_out"]
                    + P[f"{m}.b_out"]
                    for r in resid
                ]
        out.append(torch.stack([ln(r, "ln_final") @ P["unembed.W_U"] + P["unembed.b_U"] for r in resid]))
    return torch.stack(out)


@pytest.mark.parametrize("norm", ["none", "LN"])
def test_sdpa_and_explicit_paths_agree(norm, device):
    model = tiny_model(n_layers=2, normalization=norm, n_ctx=64, device=device)
    tokens = torch.randint(0, 11, (16, 64), generator=torch.Generator().manual_seed(1)).to(device)
    fast = model(tokens)
    model.explicit_attention = True
    slow = model(tokens)
    assert (fast - slow).abs().max() <= tol(device)
    model.explicit_attention = False
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")  # forces explicit
    assert (cache.model(tokens) - slow).abs().max() <= tol(device)


@pytest.mark.parametrize("norm", ["none", "LN"])
def test_split_qkv_inputs_change_nothing_and_separate_each_head(tokens, norm):
    """split_qkv_input gives each head's query (key, value) a copy of resid_pre of its own, at
    hook_q_input (k, v): the same logits, and a patch there changes that head's queries only."""
    model = tiny_model(n_layers=2, normalization=norm)
    plain = model(tokens)
    _, cache = model.run_with_cache(tokens)
    assert "blocks.1.hook_q_input" not in cache  # off by default: those hooks do not fire
    model.split_qkv_input = True
    names = ["blocks.1.hook_q_input", "blocks.1.hook_mlp_in", "blocks.1.attn.hook_q", "blocks.1.attn.hook_k"]
    logits, cache = model.run_with_cache(
        tokens, names_filter=names + ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid"]
    )
    assert (logits - plain).abs().max() <= 1e-5
    b, p = tokens.shape
    assert cache["q_input", 1].shape == (b, p, 3, 12)
    assert all(torch.equal(cache["q_input", 1][:, :, h], cache["resid_pre", 1]) for h in range(3))
    assert torch.equal(cache["mlp_in", 1], cache["resid_mid", 1])

    def zero_head_1(x, hook):
        x = x.clone()
        x[:, :, 1] = 0
        return x

    _, patched = model.run_with_cache(tokens, fwd_hooks=[("blocks.1.hook_q_input", zero_head_1)], names_filter=names)
    changed = (patched["q", 1] - cache["q", 1]).abs().amax((0, 1, 3)) > 1e-4
    assert changed.tolist() == [False, True, False]
    assert (patched["k", 1] - cache["k", 1]).abs().max() <= 1e-6


def test_hooks_never_leak(tokens, device):
    model, tokens = tiny_model(device=device), tokens.to(device)
    clean = model(tokens)

    def zero(x, hook):
        return torch.zeros_like(x)

    patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", zero)])
    assert not torch.allclose(patched, clean)
    assert not any(hp.has_hooks for hp in model.hook_dict.values())
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([(lambda n: n.endswith("hook_z"), zero)]):
            assert model.hook_dict["blocks.1.attn.hook_z"].has_hooks
            raise RuntimeError("boom")
    assert not any(hp.has_hooks for hp in model.hook_dict.values())
    model.run_with_cache(tokens)
    assert not any(hp.has_hooks for hp in model.hook_dict.values())
    torch.testing.assert_close(model(tokens), clean, rtol=0, atol=0)


def test_hook_replacement_equals_manual_ablation(tokens, device):
    """Zeroing head 1's z must equal removing its term from attn_out by hand."""
    model, tokens = tiny_model(n_layers=1, device=device), tokens.to(device)
    _, cache = model.run_with_cache(tokens)

    def kill_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", kill_head)])
    head1 = torch.einsum("bpe,ed->bpd", cache["z", 0][:, :, 1], model.W_O[0, 1])
    manual = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", lambda x, hook: x - head1)])
    torch.testing.assert_close(logits, manual, atol=tol(device), rtol=tol(device))


def test_names_filter_forms(tokens):
    model = tiny_model()
    _, c1 = model.run_with_cache(tokens, names_filter="hook_embed")
    _, c2 = model.run_with_cache(tokens, names_filter=["hook_embed", "blocks.1.hook_resid_pre"])
    _, c3 = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert list(c1) == ["hook_embed"] and list(c2) == ["hook_embed", "blocks.1.hook_resid_pre"]
    assert list(c3) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    with pytest.raises(KeyError, match="did you mean 'hook_embed'"):
        model.run_with_cache(tokens, names_filter="hook_embedd")


def test_start_and_stop_at_layer(tokens, device):
    model, tokens = tiny_model(n_layers=2, device=device), tokens.to(device)
    resid1 = model(tokens, stop_at_layer=1)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(resid1, cache["resid_pre", 1])
    torch.testing.assert_close(model(residual=resid1, start_at_layer=1), model(tokens))


def test_backward_hooks_see_gradients(tokens, device):
    model, tokens = tiny_model(device=device), tokens.to(device)
    grads = {}
    logits = model.run_with_hooks(
        tokens, bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: grads.setdefault(hook.name, g))]
    )
    logits.sum().backward()
    assert grads["blocks.0.hook_resid_post"].shape == (3, 8, 12)


def test_init_is_deterministic_in_seed():
    a, b, c = tiny_model(seed=3), tiny_model(seed=3), tiny_model(seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.W_E, c.W_E)


def test_empty_position_selections_run(device):
    """A residual stream with no positions (a patching pass with nothing to read) gives empty
    logits of the right shape instead of failing to reshape."""
    model = tiny_model(device=device)
    resid = torch.zeros(3, 0, model.cfg.d_model, device=device)
    assert model(residual=resid).shape == (3, 0, model.cfg.d_vocab_out)
    assert model.unembed(resid).shape == (3, 0, model.cfg.d_vocab_out)
