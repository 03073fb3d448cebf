"""Activation patching: one batched engine and thin named variants.

Patching copies one piece of a *source* run's activations (the clean run) into a *base* run (the
corrupted run) and measures how much of the clean behaviour comes back. TransformerLens runs one
full forward pass per patched cell. Here all the cells of one layer are stacked along the batch:
the base batch is repeated once per cell, each copy gets its own cell patched by a single hook,
and the stack starts from the base run's cached `resid_pre` of that layer
(`model(residual=..., start_at_layer=layer)`), so layers below the patch are never recomputed.
A grid costs about n_layers stacked passes (more when a stack is split into chunks to bound
memory), and for the activations that enter the residual stream linearly much less: see "the fast
path" below.

    patcher = Patcher(model, clean_tokens, corrupted_tokens, LogitDiff(clean_answers, wrong_answers))
    grid = patcher.resid_pre()          # PatchGrid: values [layer, pos], normalized, clean, corrupted
    grid = patcher.head_out_by_pos()    # [layer, pos, head]

`patch_cells` is the engine; ablation (`toylens.analysis.ablation`) uses it too, with zero, mean
or resampled activations as the source and the unablated data as the base.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from toylens.analysis.fast_patching import POSITION_GROUPS, cell_indices, fast_pass, handles, stage_values
from toylens.analysis.metrics import Metric
from toylens.config import derived
from toylens.errors import ToylensError
from toylens.model import ActivationCache, Transformer, act_name
from toylens.rundir.results import Result

# The axes of each patchable activation after the batch axis (see toylens.config.hooks).
ACT_AXES: dict[str, tuple[str, ...]] = {
    "resid_pre": ("pos", "d_model"),
    "resid_mid": ("pos", "d_model"),
    "attn_out": ("pos", "d_model"),
    "mlp_out": ("pos", "d_model"),
    "q": ("pos", "head", "d_head"),
    "k": ("pos", "head", "d_head"),
    "v": ("pos", "head", "d_head"),
    "z": ("pos", "head", "d_head"),
    "pattern": ("head", "dest", "src"),
    "attn_scores": ("head", "dest", "src"),
    "pre": ("pos", "neuron"),
    "post": ("pos", "neuron"),
}


def patchable(name: str) -> bool:
    """Whether a hook name holds an activation the patcher can patch (one of ACT_AXES)."""
    return name.rsplit(".", 1)[-1].removeprefix("hook_") in ACT_AXES


# Elements (float32) one stacked forward pass may hold in its widest activation on a CPU: ~256 MiB.
DEFAULT_BUDGET = 1 << 26
# On CUDA the widest activation may take this share of the device's free memory: a pass holds a
# few tensors of about that size at once (the activation, its successor, softmax or LayerNorm
# temporaries), and the caching allocator needs room to spare.
FREE_MEMORY_SHARE = 1 / 8


def cell_masks(act_shape: torch.Size, dims: list[int], cells: Tensor) -> Tensor:
    """Boolean masks [n_cells, *act_shape] (size 1 on un-indexed dims): cell i marks one index
    along each of `dims`; `cells` are flat indices over those dims' sizes."""
    sizes = [act_shape[d] for d in dims]
    shape = [len(cells)] + [1] * len(act_shape)
    mask = torch.ones(shape, dtype=torch.bool, device=cells.device)
    rest = cells
    for d, size in reversed(list(zip(dims, sizes))):
        index = rest % size
        rest = rest // size
        one_hot = torch.nn.functional.one_hot(index, size).bool()  # [n_cells, size]
        view = [len(cells)] + [1] * len(act_shape)
        view[d + 1] = size
        mask = mask & one_hot.view(view)
    return mask


def rows_per_pass(model: Transformer, pos: int, budget: int | None = None) -> int:
    """How many sequences one forward pass may stack within `budget` elements of its widest tensor;
    by default `DEFAULT_BUDGET` on a CPU and, on CUDA, what `FREE_MEMORY_SHARE` of the device's free
    memory holds (`rows_within`)."""
    cfg = model.cfg
    width = max(derived(cfg.d_vocab_out, "d_vocab_out"), 4 * cfg.d_model, cfg.d_mlp or 0, cfg.n_heads * pos)
    if budget is not None:
        return max(1, budget // (pos * width))
    param = next(model.parameters())
    if param.device.type != "cuda":
        return max(1, DEFAULT_BUDGET // (pos * width))
    free, _ = torch.cuda.mem_get_info(param.device)
    return rows_within(free, pos * width * param.element_size())


def rows_within(free_bytes: int, row_bytes: int, share: float = FREE_MEMORY_SHARE) -> int:
    """Rows (stacked sequences) whose widest activation, `row_bytes` each, fits in `share` of
    `free_bytes`; at least 1."""
    return max(1, int(free_bytes * share) // row_bytes)


def read_positions(metric: Metric) -> Tensor:
    """The positions any example's metric reads."""
    return metric.positions.any(0).nonzero().squeeze(-1)


@torch.no_grad()
def patch_cells(
    model: Transformer,
    base: ActivationCache,
    base_logits: Float[Tensor, "batch pos d_vocab_out"],
    source: Callable[[int], Tensor],
    metric: Metric,
    activation: str,
    index_axes: tuple[str, ...],
    layers: list[int] | None = None,
    max_rows: int | None = None,
) -> Tensor:
    """The engine: metric (mean over the batch) with each cell of `activation` patched from `source`.

    `base` is the base run's cache (it needs resid_pre, and for the fast path resid_mid, attn_out,
    mlp_out, k, v and the patched activation), `base_logits` its logits; `source(l)` the
    activation to write in (shape [batch or 1, *act]). Returns [len(layers), *index sizes].
    Cells that cannot change a position the metric reads (after its last one) are not run: they
    score the base run's value.
    """
    if activation not in ACT_AXES:
        raise ToylensError(f"cannot patch {activation!r}; patchable: {', '.join(ACT_AXES)}")
    read = read_positions(metric)
    metric = metric.at(read)
    base_read = base_logits[:, read]
    dims = [ACT_AXES[activation].index(a) for a in index_axes]
    job = _Job(model, base, base_read, metric, read, activation, index_axes, dims, max_rows)
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    return torch.stack([job.layer(layer, source(layer)) for layer in layers])


@dataclass
class _Job:
    """What every layer of one `patch_cells` call shares."""

    model: Transformer
    base: ActivationCache
    base_read: Tensor
    metric: Metric
    read: Tensor
    activation: str
    index_axes: tuple[str, ...]
    dims: list[int]
    max_rows: int | None

    def layer(self, layer: int, src: Tensor) -> Tensor:
        """The metric of every cell of `layer` [*index sizes]; a cell that changes no logit the metric
        reads is not run and scores the base run's value."""
        resid = self.base["resid_pre", layer]
        batch, pos = resid.shape[:2]
        sizes = [src.shape[1 + d] for d in self.dims]
        cells = torch.arange(math.prod(sizes), device=resid.device)
        idx = cell_indices(sizes, self.index_axes, cells)
        live = _cells_that_matter(idx, cells, self.read)
        result = self.metric(self.base_read).mean().expand(len(cells)).clone()
        per_pass = max(1, (self.max_rows or rows_per_pass(self.model, pos)) // batch)
        if not handles(self.activation, self.index_axes):
            name = act_name(self.activation, layer)
            for chunk in _chunks(live, per_pass):
                result[chunk] = _patched_pass(
                    self.model, layer, resid, src, self.metric, self.read, name, self.dims, chunk
                )
            return result.view(sizes)
        if "pos" in idx:  # cells by position, in POSITION_GROUPS passes at least, each starting later
            live = live[idx["pos"][live].argsort(stable=True)]
            per_pass = min(per_pass, max(1, -(-len(live) // POSITION_GROUPS)))
        values = stage_values(self.model, self.base, src, self.activation, layer)
        if "head" not in idx and values.shape[2] > 1:  # z patched at all heads at once
            values = values.sum(2, keepdim=True)
        for chunk in _chunks(live, per_pass):
            cell_idx = {a: i[chunk] for a, i in idx.items()}
            result[chunk] = fast_pass(
                self.model,
                layer,
                self.activation,
                self.base,
                self.base_read,
                values,
                cell_idx,
                len(chunk),
                self.metric,
                self.read,
            )
        return result.view(sizes)


def _cells_that_matter(idx: dict[str, Tensor], cells: Tensor, read: Tensor) -> Tensor:
    """The cells whose patch can change a logit the metric reads. Under causal attention a patch
    at a position (or at a query position, "dest") changes that position and later ones only, so
    a cell after the last read position (padding, the end of a window) scores as the base run; and
    when the metric reads no position at all, no cell matters."""
    if len(read) == 0:
        return cells[:0]
    at = idx.get("pos", idx.get("dest"))
    return cells if at is None else cells[at <= read.max()]


def _chunks(cells: Tensor, size: int) -> tuple[Tensor, ...]:
    """`cells` in chunks of `size`; none for no cells (split would give one empty chunk)."""
    return cells.split(size) if len(cells) else ()


def _patched_pass(
    model: Transformer,
    layer: int,
    resid: Tensor,
    src: Tensor,
    metric: Metric,
    read: Tensor,
    hook_name: str,
    dims: list[int],
    cells: Tensor,
) -> Tensor:
    """One stacked forward through a hook (any activation, any cells): copy c of the batch gets
    cell c patched. Returns the metric per cell."""
    batch, n = resid.shape[0], len(cells)
    mask = cell_masks(src.shape[1:], dims, cells).unsqueeze(1)  # [c, 1, *act]

    def hook(act: Tensor, hook: object) -> Tensor:
        stacked = act.view(n, batch, *act.shape[1:])  # rows are cell-major: copy c = rows c*B..c*B+B-1
        return torch.where(mask, src.unsqueeze(0), stacked).view(act.shape)

    with model.hooks([(hook_name, hook)]):
        logits = model(residual=resid.repeat(n, 1, 1), start_at_layer=layer, positions=read)
    return metric(logits.view(n, batch, *logits.shape[1:])).mean(-1)


@dataclass
class PatchGrid(Result):
    """A patching grid: the metric with each cell patched clean -> corrupted run."""

    activation: str
    grid_axes: list[str]
    values: Tensor
    normalized: Tensor
    clean: float
    corrupted: float
    metric: str
    metric_description: str
    labels: dict[str, list[str]]
    corruption: str

    def array_axes(self) -> dict[str, tuple[str, ...]]:
        return {"values": tuple(self.grid_axes), "normalized": tuple(self.grid_axes)}


G = TypeVar("G", bound=PatchGrid)


class Patcher:
    """A clean/corrupted pair and a metric, both runs cached once; each grid is one method call."""

    def __init__(
        self,
        model: Transformer,
        clean_tokens: Int[Tensor, "batch pos"],
        corrupted_tokens: Int[Tensor, "batch pos"],
        metric: Metric,
        *,
        max_rows: int | None = None,
        pos_labels: list[str] | None = None,
        description: str = "",
    ):
        if clean_tokens.shape != corrupted_tokens.shape:
            raise ToylensError(
                f"clean {tuple(clean_tokens.shape)} and corrupted {tuple(corrupted_tokens.shape)} tokens "
                "differ in shape"
            )
        device = next(model.parameters()).device
        self.model, self.metric, self.max_rows = model, metric.to(device), max_rows
        clean_logits, corrupted_logits = self._run(clean_tokens.to(device), corrupted_tokens.to(device))
        self.corrupted_logits = corrupted_logits
        self.clean = float(self.metric(clean_logits).mean())
        self.corrupted = float(self.metric(corrupted_logits).mean())
        self.pos_labels = pos_labels or [str(i) for i in range(clean_tokens.shape[1])]
        self.description = description

    def _run(self, clean_tokens: Tensor, corrupted_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Both forward passes: sets `clean_cache` and `corrupted_cache` (every patchable
        activation) and returns the clean and corrupted logits."""
        with torch.no_grad():
            clean_logits, self.clean_cache = self.model.run_with_cache(clean_tokens, names_filter=patchable)
            corrupted_logits, self.corrupted_cache = self.model.run_with_cache(corrupted_tokens, names_filter=patchable)
        return clean_logits, corrupted_logits

    def _check(self, activation: str) -> None:
        if activation in ("mlp_out", "resid_mid", "pre", "post") and self.model.cfg.attn_only:
            raise ToylensError(f"cannot patch {activation!r}: the model has no MLPs (attn_only)")

    def grid(self, activation: str, index_axes: tuple[str, ...]) -> PatchGrid:
        """Patch every (layer, *index_axes) cell of `activation` from the clean run."""
        self._check(activation)
        values = patch_cells(
            self.model,
            self.corrupted_cache,
            self.corrupted_logits,
            lambda l: self.clean_cache[activation, l],
            self.metric,
            activation,
            index_axes,
            max_rows=self.max_rows,
        )
        return self._result(PatchGrid, activation, index_axes, values, self.normalize(values - self.corrupted))

    def normalize(self, change: Tensor) -> Tensor:
        """A change of the metric from the corrupted run in units of the clean - corrupted gap
        (NaN where there is no gap): what `normalized` holds."""
        span = self.clean - self.corrupted
        return change / span if span != 0 else torch.full_like(change, float("nan"))

    def _result(
        self, cls: type[G], activation: str, index_axes: tuple[str, ...], values: Tensor, normalized: Tensor
    ) -> G:
        return cls(
            activation=activation,
            grid_axes=["layer", *index_axes],
            values=values.cpu(),
            normalized=normalized.cpu(),
            clean=self.clean,
            corrupted=self.corrupted,
            metric=self.metric.name,
            metric_description=self.metric.description,
            labels=self._labels(values.shape, ["layer", *index_axes]),
            corruption=self.description,
        )

    def _labels(self, shape: torch.Size, axes: list[str]) -> dict[str, list[str]]:
        named = {"pos": self.pos_labels, "dest": self.pos_labels, "src": self.pos_labels}
        return {a: named.get(a, [str(i) for i in range(n)]) for a, n in zip(axes, shape)}

    # --- the named variants (TransformerLens's get_act_patch_* equivalents) ---------------
    def resid_pre(self) -> PatchGrid:
        """The residual stream entering each block, by position: [layer, pos]."""
        return self.grid("resid_pre", ("pos",))

    def attn_out(self) -> PatchGrid:
        """Each attention layer's output, by position: [layer, pos]."""
        return self.grid("attn_out", ("pos",))

    def mlp_out(self) -> PatchGrid:
        """Each MLP's output, by position: [layer, pos]."""
        return self.grid("mlp_out", ("pos",))

    def head_out(self) -> PatchGrid:
        """Each head's output (hook_z) at every position at once: [layer, head]."""
        return self.grid("z", ("head",))

    def head_out_by_pos(self) -> PatchGrid:
        """Each head's output (hook_z) at one position: [layer, pos, head]."""
        return self.grid("z", ("pos", "head"))

    def head_pattern(self) -> PatchGrid:
        """Each head's whole attention pattern: [layer, head]."""
        return self.grid("pattern", ("head",))

    def head_pattern_by_pos(self) -> PatchGrid:
        """Each head's attention pattern for one query (destination) position: [layer, head, dest]."""
        return self.grid("pattern", ("head", "dest"))

    def head_values(self) -> PatchGrid:
        """Each head's values (hook_v) at every position at once: [layer, head]."""
        return self.grid("v", ("head",))

    def head_values_by_pos(self) -> PatchGrid:
        """Each head's values (hook_v) at one position: [layer, pos, head]."""
        return self.grid("v", ("pos", "head"))

    def head_pattern_by_dest_src(self) -> PatchGrid:
        """One entry of a head's attention pattern: [layer, head, dest, src]."""
        return self.grid("pattern", ("head", "dest", "src"))

    def head_queries(self) -> PatchGrid:
        """Each head's queries (hook_q) at every position at once: [layer, head]."""
        return self.grid("q", ("head",))

    def head_queries_by_pos(self) -> PatchGrid:
        """Each head's queries (hook_q) at one position: [layer, pos, head]."""
        return self.grid("q", ("pos", "head"))

    def head_keys(self) -> PatchGrid:
        """Each head's keys (hook_k) at every position at once: [layer, head]."""
        return self.grid("k", ("head",))

    def head_keys_by_pos(self) -> PatchGrid:
        """Each head's keys (hook_k) at one position: [layer, pos, head]."""
        return self.grid("k", ("pos", "head"))

    def neurons(self) -> PatchGrid:
        """Each MLP neuron's activation (hook_post) at every position at once: [layer, neuron]."""
        return self.grid("post", ("neuron",))

    def neurons_by_pos(self) -> PatchGrid:
        """Each MLP neuron's activation (hook_post) at one position: [layer, pos, neuron]."""
        return self.grid("post", ("pos", "neuron"))
