"""Files that survive crashes: durable atomic replacement, and a torch file checked whole before loading."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from kit.errors import UsageError, first_line


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


def load_verified(path: Path, flag: str, fix: str) -> object:
    """`torch.load(path, weights_only=True)` of a file checked whole: a missing, truncated or corrupt file
    raises UsageError naming `flag` and `fix`.

    torch.load does not check the zip members' CRC-32 (a flipped byte loads silently), so every member is
    checked with `zipfile` first.
    """
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file; {fix}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise UsageError(f"{flag} {path} is corrupt (checksum mismatch in {bad!r}); {fix}")
        return torch.load(path, map_location="cpu", weights_only=True)
    except UsageError:
        raise
    except Exception as e:  # zipfile.BadZipFile, torch's PytorchStreamReader errors, unpickling errors
        raise UsageError(f"{flag} {path} is truncated or corrupt ({first_line(e)}); {fix}") from None
