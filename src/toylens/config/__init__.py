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

`task` is any registered task config (`TASK_CONFIGS`): the shipped ones register in `tasks`, a
task defined elsewhere through `toylens.tasks.register_task`.

The parts: `base` (`Section`, the base of every section), `tasks` (the task sections and their
registry), `sections` (model, train, run), `hooks` (every hook point's name and shape, which the
config checks without the model), `files` (load, validate, save), `fields` (field paths and docs,
`--set`, diffs, validation errors), `messages` (how errors word values and suggestions), `text`
(YAML in and out). Import from `toylens.config`.
"""

from toylens.config.base import Section, SectionT
from toylens.config.fields import (
    apply_sets,
    config_diff,
    field_docs,
    field_paths,
    flatten,
    format_validation_error,
    override_value,
    set_field,
)
from toylens.config.files import config_to_yaml, load_config, save_config, validate_config, validate_input
from toylens.config.messages import kind, shown, suggest
from toylens.config.sections import L1Config, ModelConfig, RunConfig, StepRange, TrainConfig, derived
from toylens.config.tasks import (
    TASK_CONFIGS,
    WIKITEXT_SUBSETS,
    ClassifyTaskConfig,
    InductionTaskConfig,
    LmTaskConfig,
    SortTaskConfig,
    TaskConfig,
    TextTaskConfig,
    VocabConfig,
    register_task_config,
    task_config_name,
)
from toylens.config.text import SHIPPED, ConfigDumper, ConfigLoader, parse_yaml, read_yaml, shipped

__all__ = [
    "SHIPPED",
    "TASK_CONFIGS",
    "WIKITEXT_SUBSETS",
    "ClassifyTaskConfig",
    "ConfigDumper",
    "ConfigLoader",
    "InductionTaskConfig",
    "L1Config",
    "LmTaskConfig",
    "ModelConfig",
    "RunConfig",
    "Section",
    "SectionT",
    "SortTaskConfig",
    "TaskConfig",
    "TextTaskConfig",
    "StepRange",
    "TrainConfig",
    "VocabConfig",
    "apply_sets",
    "config_diff",
    "config_to_yaml",
    "derived",
    "field_docs",
    "field_paths",
    "kind",
    "flatten",
    "format_validation_error",
    "load_config",
    "override_value",
    "parse_yaml",
    "read_yaml",
    "register_task_config",
    "save_config",
    "set_field",
    "shown",
    "shipped",
    "suggest",
    "task_config_name",
    "validate_config",
    "validate_input",
]
