"""`python -m toylens ...`: the `toylens` command, for environments whose scripts are not on PATH."""

from toylens.cli import main

main()
