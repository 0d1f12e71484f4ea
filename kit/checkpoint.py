"""Crash-safe checkpoints: `checkpoints/last.ckpt` after every round, written atomically, checked on resume.

    fedkseed fit -c RECIPE --run_dir runs/X --ckpt_path runs/X/checkpoints/last.ckpt   # after kill -9

The file is written to `last.ckpt.tmp`, flushed to disk (fsync) and renamed over `last.ckpt`, so a
crash at any moment leaves the previous round's checkpoint whole. A run killed mid-round resumes
from the last completed round and redoes the interrupted round from its start; since everything
random is a function of (seed, round, client), it ends with an uninterrupted run's numbers.
Lightning's `ModelCheckpoint` is not used: with `save_top_k=0` it wrote `last.ckpt` only at the end
of fit (its fsspec transaction renames a temporary file but never fsyncs it).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint

from kit.atomic import fsync_replace, load_verified
from kit.errors import UsageError
from kit.loop import FederatedLoop

LAST = "last.ckpt"
LOOP_STATE_KEY = FederatedLoop.__qualname__  # the loop's entry in the checkpoint's "callbacks"


class RoundCheckpoint(Checkpoint):
    """Writes `dirpath/last.ckpt` atomically at the end of every round (after the loop's own end-of-round).

    Lightning runs `Checkpoint` callbacks' `on_train_epoch_end` after every other callback's, so the
    federated loop has applied the round, logged it and planned the next one when this saves.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if any(isinstance(cb, FederatedLoop) and cb.halted for cb in getattr(trainer, "callbacks", [])):
            return  # stopped at a divergence: keep the last good round's checkpoint
        tmp = self.last_path.with_name(LAST + ".tmp")
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)  # every process takes part (barrier); rank 0 writes
        if trainer.is_global_zero:
            fsync_replace(tmp, self.last_path)


def load_checkpoint(path: str | Path, flag: str = "--ckpt_path") -> dict:
    """A fedkseed checkpoint, verified whole: a missing, truncated or corrupt file raises UsageError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"{flag} {path}: no such file; pass a run's checkpoints/{LAST}, "
            f"or leave {flag} out to start afresh"
        )
    fix = f"resume from an intact copy or leave {flag} out to start afresh"
    state = load_verified(path, flag, fix)
    loop = state.get("callbacks", {}).get(LOOP_STATE_KEY) if isinstance(state, dict) else None
    if not isinstance(loop, dict) or "rounds_done" not in loop:
        raise UsageError(f"{flag} {path} is not a fedkseed checkpoint (no federated-loop state); {fix}")
    return state
