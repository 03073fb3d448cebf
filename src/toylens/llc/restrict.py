"""Weight restrictions for the refined LLC: sample a chosen part of the weights, the rest frozen at w*.

    from toylens.llc.restrict import restrictions
    rs = restrictions(model, ["heads", "layers", "embed", "unembed", "blocks.0.attn.W_*"])
    [r.name for r in rs]      # ["l0h0", "l0h1", ..., "l0.attn", "l0.mlp", ..., "embed", "unembed", ...]

A restriction is a boolean mask over every parameter (True: sampled). The sampler applies it to
the SGLD update, so the gradient, the noise and the localisation act only on the masked weights,
and the others keep exactly their values at w* (see `sampler.run_sgld`). A head is a slice of the
stacked attention tensors, not a whole tensor: head h of layer l is row h of blocks.l.attn.W_Q,
W_K, W_V, W_O, b_Q, b_K and b_V (b_O is shared by the layer's heads, so it belongs to "l{l}.attn"
but to no head). This is devinterp's "l0h1" restriction; "l0.attn" is its "l0 attn".

The specs `restrictions` expands:

    heads        one restriction per head: l{layer}h{head}
    layers       per layer, its attention (l{layer}.attn: blocks.{layer}.attn.*) and, if it has one,
                 its MLP (l{layer}.mlp: blocks.{layer}.mlp.*)
    all          every parameter (the whole model, under a restriction's name and storage: with a
                 data restriction, the data-restricted LLC of the whole model)
    embed        the token and position embeddings (embed.*, pos_embed.*)
    unembed      the unembedding (unembed.*)
    PATTERN      the parameters whose names match any of the comma-separated globs
                 (fnmatch: "blocks.0.attn.W_*,blocks.0.attn.b_*"); also any one name above
                 (l0h1, l1.attn, l0.mlp)

Each restriction may state its own ε, nβ and γ (`Restriction.epsilon`, `.nbeta`, `.gamma`; None:
the whole-model settings'), in a spec as options after colons: "heads:gamma=1000:nbeta=20:epsilon=1e-4".
`toylens.calibrate_llc(run, restrict=...)` (`toylens llc calibrate RUN --restrict ...`) picks ε and γ
per restriction; `llc_over_checkpoints` then uses each restriction's pick unless the spec states its
own.
The restricted λ̂ is nβ·(E[L(w)] - L(w*)) with w sampled on the restricted set only: the learning
coefficient of L as a function of those weights, the others held at w* (Wang et al. 2024).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
from torch import Tensor

from toylens.errors import ToylensError

HEAD_PARAMS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
KEYWORDS = ("all", "heads", "layers", "embed", "unembed")
_HEAD = re.compile(r"l(\d+)h(\d+)")
_SUBLAYER = re.compile(r"l(\d+)\.(attn|mlp)")
_BLOCK = re.compile(r"blocks\.(\d+)\.(attn|mlp)\.")


@dataclass
class Restriction:
    """The sampled part of the weights: masks[name] is True where a weight is sampled (parameters
    absent from masks are frozen whole)."""

    name: str
    """Directory name under RUN/llc/ (all, l0h1, l1.attn, embed, or a sanitised pattern)."""
    masks: dict[str, Tensor] = field(repr=False)
    nbeta: float | None = None
    """Inverse temperature of this restriction (None: the whole-model nβ)."""
    gamma: float | None = None
    """Localisation γ of this restriction (None: the whole-model γ)."""
    epsilon: float | None = None
    """Step size ε of this restriction (None: the whole-model ε; `calibrate` picks one)."""

    @property
    def n_params(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def describe(self) -> dict[str, int]:
        """{parameter name: number of its weights sampled}, stored with every result."""
        return {k: int(m.sum()) for k, m in self.masks.items()}

    def samples_everything(self, shapes: Mapping[str, torch.Size]) -> bool:
        """Whether every weight of a model with these parameters is sampled (as by `all`)."""
        return all(k in self.masks and bool(self.masks[k].all()) for k in shapes)

    def full(self, shapes: Mapping[str, torch.Size], device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """A mask for every parameter (all-False for the frozen ones)."""
        return {
            k: self.masks[k].to(device) if k in self.masks else torch.zeros(s, dtype=torch.bool, device=device)
            for k, s in shapes.items()
        }


def restrictions(
    shapes: Mapping[str, torch.Size] | torch.nn.Module,
    specs: Iterable[str | Restriction],
    *,
    nbeta: float | None = None,
    gamma: float | None = None,
) -> list[Restriction]:
    """Expand `specs` (see the module docstring; a `Restriction` passes through) over a model's
    parameters, or {name: shape}; `nbeta`/`gamma` state those of every restriction expanded here."""
    if isinstance(shapes, torch.nn.Module):
        shapes = {n: p.shape for n, p in shapes.named_parameters()}
    out: list[Restriction] = []
    for spec in specs:
        if isinstance(spec, Restriction):
            out.append(spec)
            continue
        body, own = _options(spec, nbeta, gamma)
        for name, masks in _expand(shapes, body):
            if not masks or not any(bool(m.any()) for m in masks.values()):
                raise ToylensError(f"--restrict {spec}: matches no parameter of this model")
            out.append(Restriction(name, masks, **own))
    names = [r.name for r in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ToylensError(f"--restrict: restriction {dup[0]} given twice")
    return out


def _options(spec: str, nbeta: float | None, gamma: float | None) -> tuple[str, dict[str, float | None]]:
    """'heads:gamma=1000:nbeta=20' -> ('heads', {"nbeta": 20.0, "gamma": 1000.0, "epsilon": None})."""
    body, *opts = spec.strip().split(":")
    own: dict[str, float | None] = {"nbeta": nbeta, "gamma": gamma, "epsilon": None}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key.strip() not in own:
            raise ToylensError(f"--restrict {spec}: unknown option {key!r} (nbeta=..., gamma=..., epsilon=...)")
        try:
            number = float(value)
        except ValueError:
            raise ToylensError(f"--restrict {spec}: {key} must be a number, not {value!r}") from None
        if not (number >= 0 if key.strip() == "gamma" else number > 0) or number == float("inf"):
            raise ToylensError(f"--restrict {spec}: {key} must be {'>= 0' if key.strip() == 'gamma' else '> 0'}")
        own[key.strip()] = number
    return body.strip(), own


def _expand(shapes: Mapping[str, torch.Size], spec: str) -> list[tuple[str, dict[str, Tensor]]]:
    layers = sorted({int(m.group(1)) for n in shapes if (m := _BLOCK.match(n))})
    if spec == "heads":
        n_heads = {l: shapes[f"blocks.{l}.attn.W_Q"][0] for l in layers if f"blocks.{l}.attn.W_Q" in shapes}
        return [(f"l{l}h{h}", _head(shapes, l, h)) for l, n in n_heads.items() for h in range(n)]
    if spec == "layers":
        subs = [
            (l, s) for l in layers for s in ("attn", "mlp") if any(n.startswith(f"blocks.{l}.{s}.") for n in shapes)
        ]
        return [(f"l{l}.{s}", _globs(shapes, [f"blocks.{l}.{s}.*"])) for l, s in subs]
    if spec == "all":
        return [("all", _globs(shapes, ["*"]))]
    if spec == "embed":
        return [("embed", _globs(shapes, ["embed.*", "pos_embed.*"]))]
    if spec == "unembed":
        return [("unembed", _globs(shapes, ["unembed.*"]))]
    if m := _HEAD.fullmatch(spec):
        layer, head = int(m.group(1)), int(m.group(2))
        if f"blocks.{layer}.attn.W_Q" not in shapes or head >= shapes[f"blocks.{layer}.attn.W_Q"][0]:
            raise ToylensError(f"--restrict {spec}: this model has no head {head} in layer {layer}")
        return [(spec, _head(shapes, layer, head))]
    if m := _SUBLAYER.fullmatch(spec):
        return [(spec, _globs(shapes, [f"blocks.{m.group(1)}.{m.group(2)}.*"]))]
    if not spec:
        raise ToylensError("--restrict: empty restriction")
    return [(_safe_name(spec), _globs(shapes, spec.split(",")))]


def _head(shapes: Mapping[str, torch.Size], layer: int, head: int) -> dict[str, Tensor]:
    masks = {}
    for p in HEAD_PARAMS:
        name = f"blocks.{layer}.attn.{p}"
        if name in shapes:
            mask = torch.zeros(shapes[name], dtype=torch.bool)
            mask[head] = True  # [n_heads, ...]: the head's slice
            masks[name] = mask
    return masks


def _globs(shapes: Mapping[str, torch.Size], patterns: Sequence[str]) -> dict[str, Tensor]:
    return {
        n: torch.ones(s, dtype=torch.bool)
        for n, s in shapes.items()
        if any(fnmatchcase(n, p.strip()) for p in patterns)
    }


def _safe_name(spec: str) -> str:
    """A pattern as a directory name: '*' -> 'STAR', '?' -> 'ANY', other unsafe characters -> '_'."""
    name = spec.replace("*", "STAR").replace("?", "ANY")
    return re.sub(r"[^A-Za-z0-9._,-]", "_", name)
