"""The base of every config section: strict (unknown keys are errors), frozen, documented."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict

SectionT = TypeVar("SectionT", bound=BaseModel)


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, field docstrings become descriptions.
    User input (files, --set) is validated strictly through `validate_input`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True, allow_inf_nan=False)
