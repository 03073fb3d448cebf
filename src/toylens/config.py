"""Typed, validated run configs: one YAML file = task + model + train.

    name: sort-no-decay
    seed: 0
    task:  {name: sort, list_len: 10, n_values: 50}
    model: {n_layers: 1, n_heads: 2, d_model: 64}
    train: {epochs: 10, weight_decay: 0.0, l1: {hooks: [blocks.0.mlp.hook_post], coef: 1e-4}}

Every field has a docstring (shown by `toylens config fields`). Unknown keys, wrong types and
out-of-range values raise `ToylensError` with one line naming the field, before any work starts.
Types are strict (`validate_input`): nothing is coerced, so `true` is not the number 1, `"0.1"` is
text, not a number, and 1.5 is not an integer; an int is still a float and a list fills a pair.
Derived values (`d_vocab`, `d_vocab_out`, `n_ctx`, `d_head`, `d_mlp`, `init_range`) are filled in
one place, `RunConfig.resolved`, and the resolved config is what a run directory stores.

`task` is any registered task config (`TASK_CONFIGS`): the shipped ones below register here, a
task defined elsewhere through `toylens.tasks.register_task`.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, TypeAdapter, ValidationError, model_validator
from pydantic_core import core_schema

from toylens.errors import ToylensError
from toylens.model.names import hook_names

SectionT = TypeVar("SectionT", bound=BaseModel)
T = TypeVar("T")


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, field docstrings become descriptions.
    User input (files, --set) is validated strictly through `validate_input`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------- task


class TaskConfig(Section):
    """What every task's config has: the `name` that picks the task. A task's config subclasses
    this, narrows `name` to its own (`name: Literal["sort"] = "sort"`) and adds its fields; once
    registered (`toylens.tasks.register_task`, which calls `register_task_config`) it is one of
    the choices of `RunConfig.task`."""

    name: str
    """Task name."""


TaskConfigT = TypeVar("TaskConfigT", bound=TaskConfig)

TASK_CONFIGS: dict[str, type[TaskConfig]] = {}
"""The task configs `RunConfig.task` accepts, by name, in the order they were registered."""


def register_task_config(cls: type[TaskConfigT]) -> type[TaskConfigT]:
    """Make `cls` selectable by its `name` in `RunConfig.task`: strict validation, `--set`,
    `toylens config fields`, and the configs saved in run directories and checkpoints.

    Registering a class again, or a class with the same module and name (a reloaded module, a
    re-run notebook cell), replaces it; another class under a taken name is an error."""
    name = task_config_name(cls)
    old = TASK_CONFIGS.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ToylensError(f"task {name!r} is already registered by {old.__module__}.{old.__qualname__}")
    TASK_CONFIGS[name] = cls
    return cls


def task_config_name(cls: type[TaskConfig]) -> str:
    """The one name a task config's `name` field allows (Literal["sort"] -> "sort")."""
    if not (isinstance(cls, type) and issubclass(cls, TaskConfig)):
        raise ToylensError(f"{cls!r}: a task config must subclass toylens.config.TaskConfig")
    info = cls.model_fields["name"]
    allowed = get_args(info.annotation) if get_origin(info.annotation) is Literal else ()
    if len(allowed) != 1 or not isinstance(allowed[0], str) or info.default != allowed[0]:
        raise ToylensError(f'{cls.__qualname__}.name: declare the task\'s name as name: Literal["<name>"] = "<name>"')
    return allowed[0]


class _RegisteredTaskConfig:
    """The schema of `RunConfig.task`: any registered task config, picked by `name` exactly as a
    discriminated union picks (the same strictness, the same errors at `task.sort.n_values`), but
    over the configs registered when a config is validated, so that a task registered after this
    module was imported is accepted. Serialised as the task config it holds."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def validator(strict: bool) -> core_schema.CoreSchema:
            return core_schema.with_info_plain_validator_function(functools.partial(_validate_task, strict=strict))

        return core_schema.lax_or_strict_schema(
            lax_schema=validator(False),
            strict_schema=validator(True),
            serialization=core_schema.plain_serializer_function_ser_schema(_dump_task, info_arg=True),
        )


def _validate_task(value: Any, info: Any, strict: bool) -> TaskConfig:
    # info: pydantic's ValidationInfo (a Protocol: not checkable at run time, where tests check types)
    union = _task_union(tuple(TASK_CONFIGS.values()))
    if info.mode == "json":  # JSON data (validate_input): read as JSON again, where a list fills a pair
        return union.validate_json(json.dumps(value), strict=strict)
    return union.validate_python(value, strict=strict)


@functools.lru_cache(maxsize=4)
def _task_union(members: tuple[type[TaskConfig], ...]) -> TypeAdapter:
    # A union of the classes registered at run time: a type no checker can see, hence the ignore;
    # Union[tuple] is the only spelling of a union of a tuple of classes, hence the noqa.
    union = Union[members]  # type: ignore[valid-type]  # noqa: UP007
    return TypeAdapter(Annotated[union, Field(discriminator="name")])


def _dump_task(cfg: TaskConfig, info: Any) -> dict[str, Any]:  # info: pydantic's SerializationInfo
    return cfg.model_dump(
        mode=info.mode,
        exclude_unset=info.exclude_unset,
        exclude_defaults=info.exclude_defaults,
        exclude_none=info.exclude_none,
    )


@register_task_config
class SortTaskConfig(TaskConfig):
    """Sort a list: `[x_1..x_n, SEP, y_1..y_n]`, loss on the sorted outputs only."""

    name: Literal["sort"] = "sort"
    """Task name."""
    list_len: int = Field(10, ge=1, le=512)
    """Number of values in each list (n)."""
    n_values: int = Field(50, ge=2, le=100_000)
    """Values are integers 0..n_values-1; the separator token is n_values."""
    duplicates: bool = False
    """Allow a value to appear more than once in a list."""
    n_train: int = Field(50_000, ge=1)
    """Number of distinct training lists."""
    n_test: int = Field(2_000, ge=1)
    """Number of held-out test lists (disjoint from the training lists)."""
    data_seed: int = Field(0, ge=0)
    """Seed for drawing the lists; independent of the run seed, so runs that differ only in
    seed see the same data."""

    @model_validator(mode="after")
    def _enough_lists(self) -> SortTaskConfig:
        if not self.duplicates and self.n_values < self.list_len:
            raise ValueError(f"n_values ({self.n_values}) must be >= list_len ({self.list_len}) without duplicates")
        if self.duplicates:
            log_space = self.list_len * math.log(self.n_values)
        else:
            log_space = math.lgamma(self.n_values + 1) - math.lgamma(self.n_values - self.list_len + 1)
        if log_space < math.log(2 * (self.n_train + self.n_test)):
            raise ValueError(
                f"only about {math.exp(log_space):.0f} distinct lists exist; n_train + n_test "
                f"({self.n_train + self.n_test}) must be at most half of that"
            )
        return self


@register_task_config
class InductionTaskConfig(TaskConfig):
    """In-context copying: `[BOS, x_1..x_n]` of random tokens in which one segment of random length
    reappears at a random later offset; next-token loss."""

    name: Literal["induction"] = "induction"
    """Task name."""
    n_vocab: int = Field(32, ge=2, le=100_000)
    """Random tokens are 0..n_vocab-1; BOS is n_vocab (so d_vocab = n_vocab + 1)."""
    seq_len: int = Field(128, ge=5, le=100_000)
    """Positions the model reads (n_ctx): BOS then seq_len - 1 tokens, predicting x_1..x_seq_len."""
    segment_len: tuple[int, int] = (10, 50)
    """Shortest and longest copied segment, drawn uniformly per sequence."""
    loss_on: Literal["all", "copied"] = "all"
    """Next-token loss on every position ("all", as in the field) or only where the copy makes the
    token predictable ("copied")."""
    n_train: int = Field(50_000, ge=1)
    """Training sequences per epoch (generated on the fly from (data_seed, index), never stored)."""
    n_test: int = Field(2_000, ge=1)
    """Held-out sequences (a separate random stream)."""
    data_seed: int = Field(0, ge=0)
    """Seed of the sequences; independent of the run seed."""

    @model_validator(mode="after")
    def _segments_fit(self) -> InductionTaskConfig:
        lo, hi = self.segment_len
        if not 2 <= lo <= hi:
            raise ValueError(f"segment_len must be [shortest, longest] with 2 <= shortest <= longest (got {[lo, hi]})")
        if 2 * hi > self.seq_len:
            raise ValueError(
                f"segment_len: a segment of {hi} and its copy need {2 * hi} tokens; seq_len is {self.seq_len}"
            )
        return self


WIKITEXT_SUBSETS = ("wikitext-2-v1", "wikitext-2-raw-v1", "wikitext-103-v1", "wikitext-103-raw-v1")


class TextTaskConfig(TaskConfig):
    """What the text tasks share: where the text comes from and how it is tokenized."""

    dataset: Literal["imdb", "wikitext", "hf", "files"] = "imdb"
    """imdb (Hub stanfordnlp/imdb), wikitext (Hub Salesforce/wikitext), hf (any dataset in
    `hf_path`), or files (local files in `files`)."""
    subset: str | None = None
    """The dataset's configuration: for wikitext one of wikitext-2-v1, wikitext-2-raw-v1,
    wikitext-103-v1, wikitext-103-raw-v1 (default wikitext-103-raw-v1); for imdb plain_text."""
    source: Literal["auto", "hub", "bundled"] = "auto"
    """auto: Hugging Face `datasets` (network or its local cache) when it has the data, else the
    sample shipped with toylens; hub: `datasets` only; bundled: the shipped sample only."""
    hf_path: str | None = None
    """Hub name or local directory laid out like the Hub (default: the dataset's Hub name)."""
    files: list[str] = []
    """Training files or globs (dataset: files): .txt (one document each) or .jsonl / .jsonl.gz
    (one row per line, with text_column and, for classify, label_column)."""
    test_files: list[str] = []
    """Held-out files (dataset: files); default: the last test_fraction of the training data."""
    text_column: str = "text"
    """Column holding the text."""
    tokenizer: str = "gpt2"
    """gpt2, bert-base-uncased, char, or a path to a tokenizer.json."""
    n_ctx: int = Field(128, ge=2, le=1_000_000)
    """Tokens per sequence: window length (lm) or truncation length (classify)."""
    max_examples: int | None = Field(None, ge=1)
    """Use only this many training rows: the first ones for line streams (WikiText, text files),
    a seeded random choice of documents otherwise (null = all)."""
    max_eval_examples: int | None = Field(None, ge=1)
    """Use only this many rows of the validation and test splits, chosen as for max_examples
    (null = all; quick configs use it to keep per-epoch evaluation short)."""
    val_fraction: float = Field(0.1, gt=0, lt=1)
    """Part of the training data held out for validation when the data has no validation split."""
    test_fraction: float = Field(0.1, gt=0, lt=1)
    """Part of the training data held out for testing when the data has no test split."""
    cache_dir: str = "~/.cache/toylens"
    """Where tokenized data is cached (memory-mapped arrays keyed by data + tokenizer)."""
    data_seed: int = Field(0, ge=0)
    """Seed for choosing subsets and validation rows; independent of the run seed."""

    @model_validator(mode="after")
    def _dataset_fields(self) -> TextTaskConfig:
        if self.dataset == "files" and not self.files:
            raise ValueError("files: dataset 'files' needs at least one file or glob")
        if self.dataset != "files" and (self.files or self.test_files):
            raise ValueError(f"files: only used with dataset 'files' (dataset is {self.dataset!r})")
        if self.dataset == "hf" and not self.hf_path:
            raise ValueError("hf_path: dataset 'hf' needs a Hub name or a local dataset directory")
        if self.dataset == "wikitext" and self.subset not in (None, *WIKITEXT_SUBSETS):
            raise ValueError(
                f"subset: {self.subset!r} is not a WikiText configuration; use one of {', '.join(WIKITEXT_SUBSETS)}"
            )
        if self.dataset == "imdb" and self.subset not in (None, "plain_text"):
            raise ValueError(f"subset: IMDB has one configuration, plain_text (got {self.subset!r})")
        return self


@register_task_config
class LmTaskConfig(TextTaskConfig):
    """Causal language modelling on packed windows of n_ctx tokens; loss and perplexity."""

    name: Literal["lm"] = "lm"
    """Task name."""


@register_task_config
class ClassifyTaskConfig(TextTaskConfig):
    """Sequence classification (IMDB sentiment): the label is predicted at the last real token."""

    name: Literal["classify"] = "classify"
    """Task name."""
    label_column: str = "label"
    """Column holding the integer class label (0..n_classes-1)."""


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


class TrainConfig(Section):
    """AdamW training with per-epoch evaluation and checkpoints."""

    epochs: int = Field(10, ge=1)
    """Passes over the training split; one checkpoint and one eval after each."""
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
    l1: L1Config = L1Config()
    """L1 penalty on activations."""
    eval_batch_size: int = Field(1024, ge=1)
    """Sequences per batch in evaluation passes."""
    log_checkpoints: int = Field(0, ge=0, le=10_000)
    """Extra weight-only checkpoints at this many log-spaced steps (for fast early dynamics)."""
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
                raise ValueError(f"train.l1.hooks: no hook named {name!r} in this model{_suggest(name, valid)}")
        return self

    def resolved(self, d_vocab: int, d_vocab_out: int, n_ctx: int) -> RunConfig:
        """This config with the model's derived fields filled from the task."""
        return self.model_copy(update={"model": self.model.resolved(d_vocab, d_vocab_out, n_ctx)})


# ------------------------------------------------------------------------------ load / save


def load_config(source: str | Path | dict, overrides: Iterable[str] = ()) -> RunConfig:
    """Parse a YAML file (or a dict) plus `key.path=value` overrides (`apply_sets`) into a
    validated RunConfig.

    A missing `name` defaults to the file's stem. Raises ToylensError naming the bad field.
    """
    where = "config"
    if isinstance(source, dict):
        raw = _deep_copy(source)
    else:
        path = Path(source)
        where = str(path)
        raw = read_yaml(path, "config", "a mapping of sections (task, model, train)")
        raw.setdefault("name", path.stem)
    apply_sets(raw, overrides)
    return validate_config(raw, where)


def validate_config(raw: dict, where: str = "config") -> RunConfig:
    return validate_input(RunConfig, raw, where)


def validate_input(model: type[SectionT], raw: Any, where: str) -> SectionT:
    """`model` from what a user wrote (a YAML file, --set values, JSON metadata), strictly: a bool
    is not a number, a quoted number is text, 1.5 is not an integer, a number is not text.

    Validates through JSON in pydantic's strict mode, which still takes an int for a float and a
    list for a tuple (`betas: [0.9, 0.99]`); a value JSON has no type for (a YAML date) is an error
    naming its field. Raises ToylensError: `<where>: <field>: <problem>`.
    """
    problem = _not_json(raw)
    if problem:
        raise ToylensError(f"{where}: {problem}")
    try:
        return model.model_validate_json(json.dumps(raw), strict=True)
    except ValidationError as e:
        raise ToylensError(f"{where}: {format_validation_error(e, model)}") from None


def save_config(cfg: RunConfig, path: Path) -> None:
    from toylens.storage import atomic_write_text

    atomic_write_text(path, config_to_yaml(cfg))


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.dump(cfg.model_dump(mode="json"), Dumper=ConfigDumper, sort_keys=False)


# ------------------------------------------------------------------------------------ YAML


class ConfigLoader(yaml.SafeLoader):
    """Safe YAML that also reads 1e-4 as a number. PyYAML follows YAML 1.1, where a float needs a
    dot (1e-4 is the text "1e-4"); YAML 1.2 and JSON read it as a number, and strict validation
    would otherwise reject a learning rate written the usual way."""


class ConfigDumper(yaml.SafeDumper):
    """Safe YAML that quotes text such as "1e-4", so that ConfigLoader reads it back as text."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)[eE][-+]?[0-9]+$")
for _cls in (ConfigLoader, ConfigDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def parse_yaml(text: str | bytes) -> Any:
    """YAML text as configs read it (ConfigLoader); raises yaml.YAMLError."""
    return yaml.load(text, Loader=ConfigLoader)


def read_yaml(path: Path, what: str, shape: str) -> dict:
    """The top-level mapping of a YAML file (a config, sweep spec or study). Errors name the file:
    not found, invalid YAML, empty (nothing but comments, or `{}`), or a top level that is not a
    mapping; `shape` says what the mapping holds."""
    if not path.is_file():
        raise ToylensError(f"{path}: {what} file not found")
    try:
        raw = parse_yaml(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ToylensError(f"{path}: invalid YAML{line}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise ToylensError(f"{path}: not a text file (YAML must be UTF-8)") from None
    if raw is None or raw == {}:
        raise ToylensError(f"{path}: {what} is empty")
    if not isinstance(raw, dict):
        raise ToylensError(f"{path}: the top level must be {shape}, not {_kind(raw)}")
    return raw


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted names of the fields where two configs differ."""
    flat_a, flat_b = flatten(a.model_dump(mode="json")), flatten(b.model_dump(mode="json"))
    return sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k))


def field_docs(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type, description) for every field, for `toylens config fields`."""
    rows = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = _section_type(info.annotation)
        if isinstance(sub, _UnionSection):  # one row for the `name` that picks the section, then each member's
            tags = [m.model_fields["name"].default for m in sub.members]
            rows.append((f"{dotted}.name", "|".join(tags), f"Which {name}: {', '.join(tags)}."))
            for member, tag in zip(sub.members, tags):
                rows += [
                    (n, t, f"({tag}) {d}") for n, t, d in field_docs(member, dotted + ".") if n != f"{dotted}.name"
                ]
        elif sub is not None:
            rows += field_docs(sub, dotted + ".")
        else:
            typ = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
            rows.append((dotted, typ, " ".join((info.description or "").split())))
    return rows


# ------------------------------------------------------------------------------------ helpers


def set_field(raw: dict, key: str, value: Any, where: str = "--set") -> None:
    """Set the dotted field `key` (e.g. "train.weight_decay") of a raw config mapping in place."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ToylensError(f"{where} {key!r}: empty key in {key!r}")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ToylensError(f"{where} {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = _deep_copy(value)


def field_paths(model: type[BaseModel] = RunConfig, prefix: str = "") -> set[str]:
    """Every dotted field name, sections included ("train", "train.l1", "train.l1.coef", ...)."""
    paths: set[str] = set()
    for name, info in model.model_fields.items():
        paths.add(prefix + name)
        sub = _section_type(info.annotation)
        for member in sub.members if isinstance(sub, _UnionSection) else [sub] if sub is not None else []:
            paths |= field_paths(member, f"{prefix}{name}.")
    return paths


def apply_sets(
    raw: dict, items: Iterable[str], model: type[BaseModel] = RunConfig, *, section: str | None = None
) -> dict:
    """Apply `--set KEY=VALUE` items, in order, to `raw` (a mapping to be validated as `model`);
    returns `raw`. The one reader of --set, for run configs and the LLC settings alike.

    KEY is a dotted field of `model` ("train.weight_decay"). Where `model` is a named section of
    a bigger file (the LLC settings are the `llc:` section of a study), KEY may also start with
    that name: with section="llc", "llc.chains" is "chains". VALUE is read by `override_value`.
    Raises ToylensError naming the item when it has no "=", its KEY is not a field of `model`
    (with a suggestion), or an earlier item made a section a value (`train=1`, then `train.lr=0.1`).
    """
    paths = field_paths(model)
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ToylensError(f"--set {item!r}: expected KEY=VALUE")
        field = key.removeprefix(f"{section}.") if section else key
        if field not in paths:
            raise ToylensError(f"--set {key}: unknown key{_suggest(field, paths)}")
        set_field(raw, field, override_value(model, field, text), where="--set")
    return raw


def override_value(model: type[BaseModel], key: str, text: str) -> Any:
    """The value of `--set key=text` for a field of `model`: `text` read as YAML (0.1, 1e-4, true,
    null, [a, b]), except that a field that takes text keeps `text` as written where YAML would
    read a number, a boolean or a date (`--set name=123` names a run "123")."""
    try:
        value = parse_yaml(text)
    except yaml.YAMLError:
        return text
    if value is not None and not isinstance(value, (str, list, dict)) and _takes_text(model, key):
        return text.strip()
    return value


def _takes_text(model: type[BaseModel] | _UnionSection, key: str) -> bool:
    """Whether the dotted field `key` of `model` accepts text (in any member of a union)."""
    head, _, rest = key.partition(".")
    for member in model.members if isinstance(model, _UnionSection) else [model]:
        info = member.model_fields.get(head)
        if info is None:
            continue
        if not rest:
            if _is_text(info.annotation):
                return True
            continue
        sub = _section_type(info.annotation)
        if sub is not None and _takes_text(sub, rest):
            return True
    return False


def _is_text(annotation: Any) -> bool:
    """str, str | None, or a choice of words (Literal["relu", "gelu"])."""
    if get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_text(a) for a in get_args(annotation))
    return annotation is str


def format_validation_error(err: ValidationError, root: type[BaseModel]) -> str:
    """One line: the first error's dotted field, what is wrong, and a suggestion for typos."""
    first = err.errors()[0]
    field, parent = _walk_loc(first["loc"], root)
    typ, msg = first["type"], first["msg"]
    if typ == "extra_forbidden":
        valid = list(parent.model_fields) if parent else []
        text = f"{field}: unknown key{_suggest(field.rsplit('.', 1)[-1], valid)}"
    elif typ == "missing":
        text = f"{field}: required field is missing"
    elif typ in ("union_tag_invalid", "union_tag_not_found"):  # the `name` that picks a section
        union = _section_type(parent.model_fields[field.rsplit(".", 1)[-1]].annotation) if parent else None
        tags = [m.model_fields["name"].default for m in getattr(union, "members", [])]
        given = first["input"] if isinstance(first["input"], dict) else {}
        known = "one of " + ", ".join(map(repr, tags))
        if "name" in given:
            got = given["name"]
            text = f"{field}.name: unknown name {_shown(got)}{_suggest(str(got), tags)}; {known}"
        else:
            text = f"{field}.name: required field is missing ({known})"
    else:
        msg = _YAML_WORDS.get(typ, msg).removeprefix("Value error, ")
        # A section's cross-field check that starts with one of its keys ("files: ...") names that key.
        key, _, rest = msg.partition(": ")
        info = parent.model_fields.get(field.rsplit(".", 1)[-1]) if parent and field else None  # not a list index
        section = _section_type(info.annotation) if info is not None else None
        if rest and section is not None and key in section.model_fields:
            field, msg = f"{field}.{key}", rest
        got = first.get("input")
        if isinstance(got, (dict, list)):  # a section's own checks get the whole mapping: not worth showing
            shown = f" (got {_kind(got)})" if typ.endswith("_type") else ""
        else:
            shown = f" (got {_shown(got)})"
        text = f"{field}: {msg}{shown}" if field else f"{msg}{shown}"
    more = len(err.errors()) - 1
    return text + (f" (and {more} more error{'s' * (more > 1)})" if more else "")


# Strict validation goes through JSON; its words for a mapping and a list, in YAML's.
_YAML_WORDS = {
    "model_type": "Input should be a mapping",
    "dict_type": "Input should be a mapping",
    "model_attributes_type": "Input should be a mapping",
    "list_type": "Input should be a list",
    "tuple_type": "Input should be a list",
}


def _not_json(value: Any, path: str = "", outer: tuple[int, ...] = ()) -> str | None:
    """The first value JSON has no type for (a YAML date or set, a non-text key, a mapping that
    holds itself through a YAML alias) as `field: problem`; `outer` are the enclosing containers."""
    if isinstance(value, (dict, list, tuple)) and id(value) in outer:
        return f"{path}: contains itself (a YAML alias inside its own anchor)"
    if isinstance(value, dict):
        for key, item in value.items():
            dotted = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                return f"{dotted}: a key must be text (got {key!r})"
            problem = _not_json(item, dotted, (*outer, id(value)))
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _not_json(item, f"{path}.{i}", (*outer, id(value)))
            if problem:
                return problem
    elif not (value is None or isinstance(value, (str, int, float))):
        kind = {"date": "a date", "datetime": "a timestamp", "bytes": "binary data"}.get(
            type(value).__name__, f"a {type(value).__name__}"
        )
        return f"{path or 'value'}: {value} is {kind}, not text, a number, a boolean, null, a list or a mapping"
    return None


def _shown(value: Any) -> str:
    """A value in an error message: repr, but null for None (as the user wrote it)."""
    return "null" if value is None else repr(value)


def _kind(value: Any) -> str:
    """A value as a YAML user would name it: "a mapping", "a list", "text 'abc'", "3", "null"."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"text {value!r}"
    return _shown(value)


def _walk_loc(loc: tuple, root: type[BaseModel]) -> tuple[str, type[BaseModel] | _UnionSection | None]:
    """Dotted field name for a pydantic error location, skipping union tags; and the section
    class holding the last key (for suggesting valid keys)."""
    names: list[str] = []
    model: type[BaseModel] | _UnionSection | None = root
    parent: type[BaseModel] | _UnionSection = root
    for part in loc:
        if model is None:
            names.append(str(part))
            continue
        if isinstance(part, str) and part in model.model_fields:
            parent = model
            names.append(part)
            model = _section_type(model.model_fields[part].annotation)
            continue
        tagged = _union_member(model, part)
        if tagged is not None:  # a discriminated-union tag such as "sort": not a user-visible key
            model = tagged
            continue
        parent = model
        names.append(str(part))
        model = None
    return ".".join(names), parent


def _section_type(annotation: Any) -> type[BaseModel] | _UnionSection | None:
    if annotation is TaskConfig:  # RunConfig.task: one of the registered task configs
        return _UnionSection(list(TASK_CONFIGS.values()))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if get_origin(annotation) is Union or members:
        return _UnionSection(members) if members else None
    return None


class _UnionSection:
    """Stand-in for a union of sections while walking an error location."""

    def __init__(self, members: list[type[BaseModel]]):
        self.members = members
        self.model_fields = {k: v for m in members for k, v in m.model_fields.items()}


def _union_member(model: Any, tag: Any) -> type[BaseModel] | None:
    for member in getattr(model, "members", []):
        name_field = member.model_fields.get("name")
        if name_field is not None and name_field.default == tag:
            return member
    return None


def _suggest(word: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d
