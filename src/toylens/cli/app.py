"""The `toylens` command's frame: the Typer apps, the options every command shares, and the
one-line user errors. The commands live beside it: `commands` (the pipeline), `llc`, `config`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperGroup

from toylens.errors import ToylensError
from toylens.rundir import HELP as CHECKPOINT_HELP

app = typer.Typer(
    help="Train small transformers from scratch and open them up: hooks, circuits, patching, LLC, reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(
    help="Inspect configs: every field with its meaning, or a resolved config.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


class _DefaultToEstimate(TyperGroup):
    """`toylens llc RUN ...` means `toylens llc estimate RUN ...`; `toylens llc calibrate RUN` stays."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["estimate", *args]
        return super().parse_args(ctx, args)


llc_app = typer.Typer(
    cls=_DefaultToEstimate,
    no_args_is_help=True,
    help=(
        "Local learning coefficient (LLC) of checkpoints by batched SGLD: `toylens llc RUN` estimates every "
        "checkpoint into RUN/llc/; `toylens llc calibrate RUN` picks the step size and localisation first."
    ),
)
app.add_typer(llc_app, name="llc")

SET_VALUES = (
    "VALUE is read as YAML (0.1, 1e-4, true, null, [a, b]), except that a text field keeps it as "
    "written: --set name=123 names the run 123."
)
SetOption = typer.Option(
    None,
    "--set",
    metavar="KEY=VALUE",
    help=(
        "Override a config field, e.g. --set train.weight_decay=0.1 (repeatable; KEY is a dotted field, "
        "see `toylens config fields`). " + SET_VALUES
    ),
)
DeviceOption = typer.Option(
    "auto", "--device", help="Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1."
)


def CheckpointOption(default: str | None, shown: str | None = None) -> Any:
    """The --checkpoint option of every command that reads checkpoints: one spelling, one help text."""
    return typer.Option(default, "--checkpoint", help=CHECKPOINT_HELP, show_default=shown or True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ToylensError into one line on stderr and its exit code (2 for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ToylensError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; continue with --resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


def metrics_line(row: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in row.items() if "/" in k and isinstance(v, (int, float)))
