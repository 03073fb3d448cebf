"""`python -m toylens.cli ...`: the `toylens` command (torchrun starts it this way)."""

from toylens.cli import main

if __name__ == "__main__":  # not on a plain import (the import checks import every module)
    main()
