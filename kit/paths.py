"""Where the kit finds data and caches: config first, then environment, never a hard-coded path."""

from __future__ import annotations

import os
from pathlib import Path

from kit.errors import UsageError

DATA_ROOT_ENV = "FEDKSEED_DATA_ROOT"
CACHE_ENV = "FEDKSEED_CACHE"


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local data root: `explicit` if given, else `$FEDKSEED_DATA_ROOT`, else None (load from the Hub)."""
    value = explicit if explicit not in (None, "") else os.environ.get(DATA_ROOT_ENV)
    if value in (None, ""):
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise UsageError(
            f"data root {root} does not exist; pass --data.data_root DIR or set ${DATA_ROOT_ENV} "
            "to a folder holding dolly/ and natural-instructions/ (see README)"
        )
    return root


def cache_dir() -> Path:
    """The kit's cache (converted models): `$FEDKSEED_CACHE` or `~/.cache/fedkseed`."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "fedkseed")).expanduser()
