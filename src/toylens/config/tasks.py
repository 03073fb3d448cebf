"""The task sections, typed and documented, and their registry: one config class per task (sort,
induction, lm, classify), registered by name; a task defined elsewhere registers its own
(`register_task_config`, which `toylens.tasks.register_task` calls). `task:` in a run config
validates against whichever class its `name` picks."""

from __future__ import annotations

import functools
import json
import math
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import Field, GetCoreSchemaHandler, TypeAdapter, model_validator
from pydantic_core import core_schema

from toylens.config.base import Section
from toylens.errors import ToylensError


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


class VocabConfig(Section):
    """A compact vocabulary: the tokenizer's ids (GPT-2, BERT, ...; tokenization unchanged) mapped to
    the most frequent ids of the training split plus one "other" id for every rarer token. The
    model's d_vocab (and, for lm, d_vocab_out) is the compact size, so the unembedding and the
    softmax shrink from 50,257 columns to a few thousand. The mapping is saved with the run
    (`task/vocab.json`), so a loaded run encodes text and labels tokens (the bucket as `<other>`)
    exactly as in training.

    Evaluation counts the bucket honestly: it is one more class in the loss (predicting a rare
    token's bucket is scored as predicting the bucket), the unigram baseline (`unigram_loss`) is
    fitted and scored over the same compact ids, and `other_frac` reports the fraction of a split's
    tokens (lm: targets; classify: review tokens) that fall in the bucket."""

    max_size: int = Field(ge=8, le=1_000_000)
    """Ids kept, the tokenizer's special tokens (end-of-text, padding, [CLS]/[SEP]) included, which
    are always kept; the rest are the most frequent tokens of the training split (ties: lower id
    first). d_vocab is at most max_size + 1 (the bucket)."""
    min_count: int = Field(1, ge=1)
    """Keep a token only if it occurs at least this many times in the training split (special tokens
    are kept regardless); rarer tokens go to the bucket even when max_size has room."""


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
    vocab: VocabConfig | None = None
    """A compact vocabulary, {max_size: N, min_count: C}: the N most frequent training tokens plus
    one `<other>` id (see VocabConfig); null = the tokenizer's full vocabulary."""

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
