"""Give the C heap's free pages back to the operating system before a phase that allocates a lot.

glibc's malloc keeps memory freed by an earlier phase (loading the model, a training round, the eval
loss's batches) resident for reuse, scattered between live blocks: a later phase that needs blocks of
other sizes (the eval batch's activations, a KV cache) then raises the peak RSS on top of it. Measured
on the quickstart (benchmarks/README.md): trimming before the eval loss and before generation lowered
their peaks by 190 and 133 MiB. Elsewhere than glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Collect Python garbage, then return the heap's free pages to the OS (glibc's malloc_trim(0))."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
