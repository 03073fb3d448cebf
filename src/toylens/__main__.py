"""`python -m toylens ...`: the `toylens` command, for environments whose scripts are not on PATH."""

from toylens.cli import main

if __name__ == "__main__":  # not on a plain import (the import checks import every module)
    main()
