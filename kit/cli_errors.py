"""One error path for every `fedkseed` subcommand: a problem the user can fix is one line on stderr
and exit status 2; a bug keeps its traceback.

    run_guarded("fedkseed export", export_main, argv)   # UsageError -> "fedkseed export: error: ..."

Fixable: the kit's own `UsageError` (bad flags, paths, checkpoints; range checks), `SeedFileError`
(an untrusted seed file), a missing file, and a run directory or output path that cannot be written
(permission denied, read-only file system). Argument-parser errors (unknown flags or choices) are
one line plus a hint to `--help` instead of the whole usage (`OneLineParser`, `one_line_argparse`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from kit.errors import UsageError
from kit.federation.seedfile import SeedFileError

FIXABLE = (UsageError, SeedFileError)
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def fail(prog: str, message: str) -> NoReturn:
    """Print `prog: error: message` (one line) and exit with status 2."""
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def fixable_message(error: BaseException) -> str | None:
    """The one line of a problem the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(error, FIXABLE):
        return str(error)
    if isinstance(error, FileNotFoundError):
        where = error.filename or ""
        return f"{where}: no such file or directory; check the path" if where else str(error)
    if isinstance(error, OSError) and error.errno in UNWRITABLE:
        where = error.filename or "a path"
        return (
            f"cannot write {where}: {error.strerror}; choose a writable location "
            "(--run_dir / --out) or fix its permissions"
        )
    return None


def run_guarded(prog: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, with a fixable error turned into one line on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 (re-raised unless fixable)
        message = fixable_message(error)
        if message is None:
            raise
        fail(prog, message)


def _hint(prog: str, message: str) -> str:
    return f"{_one_line(message)} (run `{prog} --help` for the options)"


class OneLineParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one line and a hint instead of the whole usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        words = (parser.prog or "").replace(" [options]", "").split()
        prog = "fedkseed" + (f" {words[-1]}" if len(words) > 1 else "")
        fail("fedkseed", _hint(prog, message))


def one_line_argparse(parser: argparse.ArgumentParser, prog: str) -> argparse.ArgumentParser:
    """Make a plain argparse parser's errors one line and a hint."""

    def error(message: str) -> NoReturn:
        fail(prog, _hint(prog, message))

    parser.error = error  # type: ignore[method-assign]
    return parser


def quiet_seed(set_seed: Callable[[], None]) -> None:
    """Run LightningCLI's seeding without its "Seed set to N" info line on stderr (which would
    precede, and double, a one-line error)."""
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        set_seed()
    finally:
        seed_log.setLevel(level)


def ensure_writable(directory: str | Path) -> None:
    """Create `directory` if needed and prove it writable with a probe file (permission bits do not
    tell, e.g. for root on a read-only mount); raises OSError naming the path otherwise."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as error:
        raise type(error)(error.errno, error.strerror, str(path)) from None
    probe.unlink()
