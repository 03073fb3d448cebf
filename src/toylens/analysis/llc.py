"""Moved to `toylens.llc` (estimator, objective, settings); this name goes in the next release."""

from toylens.analysis._moved import forward

__getattr__ = forward(__name__, "toylens.llc.estimator", "toylens.llc.objective", "toylens.llc.settings")
