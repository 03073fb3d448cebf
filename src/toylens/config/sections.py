"""The model, training and run sections, typed and documented (the task sections are `tasks`).
Every field's docstring is its description."""

from __future__ import annotations

import math
from typing import Annotated, Literal, TypeVar

from pydantic import Discriminator, Field, Tag, model_validator

from toylens.config.base import Section
from toylens.config.hooks import hook_names
from toylens.config.messages import suggest
from toylens.config.tasks import SortTaskConfig, TaskConfig, _RegisteredTaskConfig
from toylens.errors import ToylensError

T = TypeVar("T")

__all__ = ["L1Config", "ModelConfig", "RunConfig", "StepRange", "TrainConfig", "derived"]


# ---------------------------------------------------------------------------------------- model


class ModelConfig(Section):
    """A decoder-only transformer, named as in TransformerLens."""

    n_layers: int = Field(1, ge=1, le=64)
    """Number of transformer blocks."""
    n_heads: int = Field(4, ge=1, le=128)
    """Attention heads per layer."""
    d_model: int = Field(128, ge=1)
    """Width of the residual stream."""
    d_head: int | None = Field(None, ge=1)
    """Width of each head (default: d_model // n_heads)."""
    d_mlp: int | None = Field(None, ge=1)
    """Hidden width of each MLP (default: 4 * d_model; unused when attn_only)."""
    attn_only: bool = False
    """Blocks without MLPs."""
    act_fn: Literal["relu", "gelu"] = "relu"
    """MLP activation function."""
    normalization: Literal["none", "LN"] = "none"
    """LayerNorm before attention, MLP and unembedding ("LN"), or none."""
    n_ctx: int | None = Field(None, ge=1)
    """Context length (default: what the task needs)."""
    d_vocab: int | None = Field(None, ge=1)
    """Input vocabulary size (default: the task's)."""
    d_vocab_out: int | None = Field(None, ge=1)
    """Output vocabulary size (default: the task's)."""
    init_range: float | None = Field(None, gt=0)
    """Std of the normal weight init (default: 0.8 / sqrt(d_model), as TransformerLens)."""

    @property
    def is_resolved(self) -> bool:
        return None not in (self.d_head, self.n_ctx, self.d_vocab, self.d_vocab_out, self.init_range)

    def resolved(self, d_vocab: int, d_vocab_out: int, n_ctx: int) -> ModelConfig:
        """Fill the derived fields from the task; an explicit n_ctx must cover the task's."""
        if self.n_ctx is not None and self.n_ctx < n_ctx:
            raise ToylensError(f"model.n_ctx: {self.n_ctx} is shorter than the task's sequences ({n_ctx} tokens)")
        if self.d_vocab is not None and self.d_vocab < d_vocab:
            raise ToylensError(f"model.d_vocab: {self.d_vocab} is smaller than the task's vocabulary ({d_vocab})")
        if self.d_vocab_out is not None and self.d_vocab_out < d_vocab_out:
            raise ToylensError(
                f"model.d_vocab_out: {self.d_vocab_out} is smaller than the task's outputs ({d_vocab_out})"
            )
        return self.model_copy(
            update=dict(
                d_head=self.d_head or max(1, self.d_model // self.n_heads),
                d_mlp=None if self.attn_only else (self.d_mlp or 4 * self.d_model),
                n_ctx=self.n_ctx or n_ctx,
                d_vocab=self.d_vocab or d_vocab,
                d_vocab_out=self.d_vocab_out or d_vocab_out,
                init_range=self.init_range or 0.8 / math.sqrt(self.d_model),
            )
        )


def derived(value: T | None, field: str) -> T:
    """A derived `ModelConfig` field (`d_head`, `d_mlp`, `n_ctx`, `d_vocab`, `d_vocab_out`,
    `init_range`) as `ModelConfig.resolved` filled it: what a model is built from and analysed with.
    Raises ValueError for a config that was not resolved (or `d_mlp` without MLPs)."""
    if value is None:
        raise ValueError(f"model.{field} is unset: this needs a resolved ModelConfig (see ModelConfig.resolved)")
    return value


# ---------------------------------------------------------------------------------------- train


class L1Config(Section):
    """L1 penalty on named activations: coef * mean over tokens of sum(|a|) over the last dim."""

    hooks: list[str] = []
    """Hook names whose activations are penalised, e.g. [blocks.0.mlp.hook_post]."""
    coef: float = Field(0.0, ge=0)
    """Penalty coefficient (0 = off)."""


class StepRange(Section):
    """Checkpoints every `every` steps from `start` to `stop` (a linear window of a checkpoint
    schedule: dense where the dynamics are fast, e.g. around a phase change)."""

    start: int = Field(ge=1)
    """First step of the window."""
    stop: int = Field(ge=1)
    """Last step of the window (included when it falls on the grid)."""
    every: int = Field(ge=1)
    """Steps between two checkpoints of the window."""

    @model_validator(mode="after")
    def _ordered(self) -> StepRange:
        if self.stop < self.start:
            raise ValueError(f"stop ({self.stop}) is before start ({self.start})")
        return self

    def steps(self) -> range:
        return range(self.start, self.stop + 1, self.every)


class TrainConfig(Section):
    """AdamW training with per-epoch evaluation and checkpoints."""

    epochs: int = Field(10, ge=1)
    """Passes over the training split; one checkpoint and one eval after each."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimisation steps in all (null = no limit): training is the first
    min(max_steps, epochs * steps per epoch) steps, and the learning-rate schedule spans exactly
    those. An epoch cut short counts as an epoch: it ends, like any other, with an eval and a
    checkpoint (at step max_steps), and the run finishes (final weights, summary). A limit at or
    above the run's length changes nothing. --resume of a finished run trains no further; the
    limit is part of the config, so a run cannot be resumed with another."""
    batch_size: int = Field(256, ge=1)
    """Sequences per optimisation step."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW (decoupled) weight decay."""
    weight_decay_on: Literal["matrices", "embeddings", "all"] = "matrices"
    """Which parameters decay: "matrices" (W_Q, W_K, W_V, W_O, W_in, W_out, W_U), "embeddings"
    (matrices plus W_E and W_pos), or "all" (also biases and LayerNorm)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate shape after warmup."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup from 0 to lr over this many steps."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Cosine schedule floor, as a fraction of lr."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value (null = no clipping)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32: all of training in float32. bf16: the training forward pass (matrix products,
    attention) under torch.autocast with bfloat16 on the run's device; the logits are cast back
    and the loss, weights, gradients and AdamW stay float32, with no loss scaling (bfloat16 keeps
    float32's exponent range). Evaluation, analysis and the LLC stay float32. A GPU speed path
    (bf16 tensor cores); on a CPU it runs, seldom faster."""
    compile: bool = False
    """Run the training forward pass (an ensemble's: its vmapped forward and loss) under
    torch.compile with the inductor backend. The first step of each batch shape compiles (seconds
    to a minute on a GPU, tens of seconds on a CPU, where it needs a C++ compiler); later steps
    run fused kernels. Losses match the uncompiled run up to float rounding. A GPU speed path:
    it pays for long runs of small models, whose steps are dominated by kernel launches. An
    ensemble with an L1 penalty trains uncompiled (torch.compile cannot trace the penalty's hooks
    inside vmap)."""
    l1: L1Config = L1Config()
    """L1 penalty on activations."""
    eval_batch_size: int = Field(1024, ge=1)
    """Sequences per batch in evaluation passes."""
    log_checkpoints: int = Field(0, ge=0, le=10_000)
    """Extra weight-only checkpoints at this many log-spaced steps (for fast early dynamics)."""
    checkpoint_steps: list[
        Annotated[
            Annotated[int, Field(ge=1), Tag("step")] | Annotated[StepRange, Tag("window")],
            Discriminator(lambda v: "window" if isinstance(v, dict | StepRange) else "step"),
        ]
    ] = []
    """Extra weight-only checkpoints at these steps: a step number, or a window {start, stop,
    every} of linearly spaced steps, e.g. [{start: 900, stop: 1500, every: 50}] around a phase
    change. With the epoch and log-spaced checkpoints they form the run's schedule (named
    step-NNNNNN; `--checkpoint all` is every one of them); a step past the run's last is an error
    when training starts."""
    select_metric: str | None = None
    """Metric that picks the best checkpoint, e.g. "val/loss" (default: the task's choice); the
    task says whether lower or higher is better (loss and ppl lower, acc higher)."""
    deterministic: bool = True
    """Reruns give identical weights. On a CPU toylens's own kernels are deterministic at any
    thread count, so this changes nothing there; on CUDA it turns on
    `torch.use_deterministic_algorithms` (and sets CUBLAS_WORKSPACE_CONFIG=:4096:8 when unset)
    for the run, at some cost in speed. false lets CUDA pick its fastest, order-dependent kernels."""


# ------------------------------------------------------------------------------------------ run


class RunConfig(Section):
    """One run: what to learn (task), with what (model), how (train)."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    """Run name; the run directory is <out>/<name>."""
    seed: int = Field(0, ge=0)
    """Seed for data generation, initialisation and data order."""
    task: Annotated[TaskConfig, _RegisteredTaskConfig] = Field(default_factory=SortTaskConfig)
    """The task and its data."""
    model: ModelConfig = ModelConfig()
    """The transformer."""
    train: TrainConfig = TrainConfig()
    """The optimiser, schedule, regularisers and checkpoints."""

    @model_validator(mode="after")
    def _l1_hooks_exist(self) -> RunConfig:
        valid = hook_names(self.model)
        for name in self.train.l1.hooks:
            if name not in valid:
                raise ValueError(f"train.l1.hooks: no hook named {name!r} in this model{suggest(name, valid)}")
        return self

    def resolved(self, d_vocab: int, d_vocab_out: int, n_ctx: int) -> RunConfig:
        """This config with the model's derived fields filled from the task."""
        return self.model_copy(update={"model": self.model.resolved(d_vocab, d_vocab_out, n_ctx)})
