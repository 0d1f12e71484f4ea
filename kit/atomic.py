"""Durable atomic replacement of a file: after a crash at any moment, the old or the new file, whole."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_replace(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk, rename it over `path` atomically, and flush the directory entry."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
