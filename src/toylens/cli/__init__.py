"""The `toylens` command. Each subcommand parses its arguments and calls the Python API.

Errors in what the user gave (config fields, paths, checkpoints) print one line and exit 2.
Every command that computes takes --device (default auto: cuda if available, else cpu), and
every --set is read by one function, `toylens.config.apply_sets`. The frame (apps, shared options,
errors) is `app`; the commands are `commands` (train ... reproduce), `llc` and `config`.
`python -m toylens.cli ...` is the same command (torchrun uses it).
"""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

from toylens.cli import commands, config, llc  # noqa: F401  (each registers its commands)
from toylens.cli.app import app


class _TqdmHandler(logging.Handler):
    """Log lines that do not break a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def main() -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("toylens")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    app()
