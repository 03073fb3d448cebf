"""The installed toylens version, read from the package metadata (pyproject.toml's `version`).

A module of its own so that anything can import it (the report stamps it on every page) without
importing the whole package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("toylens")
except PackageNotFoundError:  # a source tree on sys.path that was never pip-installed
    __version__ = "0+unknown"
