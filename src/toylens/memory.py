"""Process-wide CPU memory tuning shared by training, analysis and the LLC."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys


@functools.cache
def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep large freed buffers for reuse instead of handing them back to the OS.

    By default glibc serves each allocation over ~32 MB with its own mmap and unmaps it on free,
    so every training or SGLD step that builds the same large tensors (a [batch, n_ctx, 50257]
    logit tensor and its gradient, many rows of activations) page-faults them afresh. Measured:
    a GPT-2-vocabulary training step 672 ms (half of it kernel time) against 331 ms with this;
    35-40% of an LLC run's CPU time on the study-2 runs was system time, ~1% with this. Raises
    the mmap and trim thresholds to 1 GB, so freed buffers are reused; the process keeps its
    peak memory instead of returning it. Called, explicitly, by the entry points that benefit:
    `train` and `train_ensemble` on a CPU, `analyze` on a CPU, and the LLC's
    `llc_over_checkpoints` and `calibrate` (`toylens.device.resolve_device` changes nothing).
    Set TOYLENS_MALLOC_TUNING=0 to leave malloc alone. Returns whether the thresholds were set
    (False where the C library is not glibc).
    """
    if os.environ.get("TOYLENS_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = mallopt(m_mmap_threshold, 1 << 30) == 1
    ok &= mallopt(m_trim_threshold, 1 << 30) == 1
    ok &= mallopt(m_top_pad, 64 << 20) == 1
    return bool(ok)
