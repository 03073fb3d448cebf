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

`task` is any registered task config (`TASK_CONFIGS`): the shipped ones register in `sections`, a
task defined elsewhere through `toylens.tasks.register_task`.

The parts: `sections` (the typed classes), `files` (load, validate, save), `fields` (field paths
and docs, `--set`, diffs, error messages), `text` (YAML in and out). Import from `toylens.config`.
"""

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
from toylens.config.sections import (
    TASK_CONFIGS,
    WIKITEXT_SUBSETS,
    ClassifyTaskConfig,
    InductionTaskConfig,
    L1Config,
    LmTaskConfig,
    ModelConfig,
    RunConfig,
    Section,
    SortTaskConfig,
    StepRange,
    TaskConfig,
    TextTaskConfig,
    TrainConfig,
    VocabConfig,
    _suggest,
    derived,
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
    "SortTaskConfig",
    "TaskConfig",
    "TextTaskConfig",
    "StepRange",
    "TrainConfig",
    "VocabConfig",
    "_suggest",
    "apply_sets",
    "config_diff",
    "config_to_yaml",
    "derived",
    "field_docs",
    "field_paths",
    "flatten",
    "format_validation_error",
    "load_config",
    "override_value",
    "parse_yaml",
    "read_yaml",
    "register_task_config",
    "save_config",
    "set_field",
    "shipped",
    "task_config_name",
    "validate_config",
    "validate_input",
]
