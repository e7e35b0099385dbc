"""glibc's allocator thresholds, fixed for a training process (issue 30).

glibc serves an allocation above its mmap threshold with a fresh ``mmap`` and adapts the threshold to the
process's history (up to 32 MiB), and it returns freed memory at the top of the heap to the system past its
trim threshold. A training step allocates and frees the same multi-megabyte activations every step, so,
depending on that history, each step can page-fault its activations in anew: on the 2-core build VM the
pre-training step of the smoke recipe took 3,560 minor page faults per step (lightly-train's DINO step on
the same encoder 2,250) and ran 0.82-0.90x of that DINO step; with the thresholds fixed, one fault per step
and 0.91-0.94x (docs/performance.md, "Against the peers"). Fixing both (``mallopt``) also stops the
adaptation, so the figures no longer depend on what the process did before. DataLoader workers forked
afterwards inherit the setting. A no-op off glibc, and where the user set ``MALLOC_MMAP_THRESHOLD_``.
"""

from __future__ import annotations

import os
import sys

MMAP_THRESHOLD = 64 * 2**20  # below it, blocks come from (and go back to) the heap
TRIM_THRESHOLD = 256 * 2**20  # free memory the heap keeps before giving any back
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def pin_malloc_thresholds(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds for this process; True when they were set."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mmap_ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    return mmap_ok and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
