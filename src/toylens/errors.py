"""User-facing errors.

Anything a user can get wrong (a config field, a file, a checkpoint) raises `ToylensError` with a
one-line message naming the field or file. The CLI prints it as `error: ...` and exits with code 2.
"""


class ToylensError(Exception):
    """Bad input: a config field, a path, a run directory or a checkpoint file."""

    exit_code = 2


class TrainingDiverged(ToylensError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1
