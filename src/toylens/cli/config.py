"""`toylens config fields | show | list`: the config schema, a resolved config, the shipped configs."""

from __future__ import annotations

from pathlib import Path

import typer

from toylens.cli.app import SetOption, config_app, user_errors


@config_app.command("fields")
def config_fields() -> None:
    """List every config field with its type and meaning."""
    from toylens.config import field_docs

    for name, typ, doc in field_docs():
        typer.echo(f"{name:28s} {typ:22s} {doc}")


@config_app.command("show")
@user_errors
def config_show(
    config: Path = typer.Argument(..., help="Run config (YAML)."), set_: list[str] | None = SetOption
) -> None:
    """Validate CONFIG (with overrides) and print it with every default and derived value filled in."""
    from toylens.config import config_to_yaml, load_config
    from toylens.tasks import build_task

    cfg = load_config(config, tuple(set_ or ()))
    spec = build_task(cfg.task).spec
    typer.echo(config_to_yaml(cfg.resolved(spec.d_vocab, spec.d_vocab_out, spec.n_ctx)), nl=False)


@config_app.command("list")
@user_errors
def config_list() -> None:
    """List the configs shipped with toylens (run configs, studies/, sweeps/) as the paths the
    commands take; from a folder without its own configs/, such a path reads the shipped file."""
    from toylens.config import SHIPPED

    for path in sorted(SHIPPED.rglob("*.yaml"), key=lambda p: (len(p.relative_to(SHIPPED).parts), p.as_posix())):
        typer.echo(f"configs/{path.relative_to(SHIPPED).as_posix()}")
