"""kit.heap.release_free_memory gives freed heap pages back: the process's RSS falls after it."""

from __future__ import annotations

import pytest
import torch

from kit.heap import _malloc_trim, release_free_memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(_malloc_trim() is None, reason="no glibc malloc_trim on this system")
def test_freed_heap_pages_return_to_the_os():
    # 2,000 blocks of 64 KiB (below malloc's mmap threshold: they live in the heap), every one written
    blocks = [torch.ones(16 * 1024) for _ in range(2000)]
    keep = blocks[::50]  # live blocks scattered among the freed ones keep the heap from shrinking by itself
    del blocks
    before = rss_bytes()
    release_free_memory()
    after = rss_bytes()
    assert len(keep) == 40
    assert before - after > 64 * 2**20  # most of the ~125 MiB freed comes back
