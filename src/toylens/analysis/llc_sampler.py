"""Moved to `toylens.llc.sampler`; this name goes in the next release."""

from toylens.analysis._moved import forward

__getattr__ = forward(__name__, "toylens.llc.sampler")
