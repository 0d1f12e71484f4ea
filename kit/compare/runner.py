"""Run a grid's cells, one `fedkseed fit` process each, skipping cells that already finished.

A cell is finished when its run directory's `summary.json` says `"finished": true`. An interrupted cell
resumes from its last round's checkpoint when it has one, else it starts again in a clean directory; so
an interrupted comparison, run again, redoes no finished cell. Each cell runs in its own process: a
crashed or killed cell cannot take the grid's memory or state with it, and its output is kept in
`<cell>/fit.log`. A failed cell is reported and the grid goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kit.compare.grid import Cell

CHECKPOINT = Path("checkpoints") / "last.ckpt"


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    run_dir: Path
    status: str  # "done" (ran now), "skipped" (finished before), "failed"
    seconds: float = 0.0


def is_finished(run_dir: Path) -> bool:
    """True when the run directory holds the summary of a finished run."""
    try:
        return bool(json.loads((run_dir / "summary.json").read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def fit_command(cell: Cell, run_dir: Path) -> list[str]:
    """The `fedkseed fit` command of a cell, resuming from its checkpoint when one is there."""
    cmd = [
        sys.executable,
        "-m",
        "kit",
        "fit",
        "--fed.progress",
        "false",
        *cell.argv,
        "--run_dir",
        str(run_dir),
    ]
    if (run_dir / CHECKPOINT).is_file():
        cmd += ["--ckpt_path", str(run_dir / CHECKPOINT)]
    return cmd


def run_cell(cell: Cell, out: Path) -> CellResult:
    """Run one cell to completion (or skip it if finished); its output goes to `<run_dir>/fit.log`."""
    run_dir = out / cell.name
    if is_finished(run_dir):
        return CellResult(cell, run_dir, "skipped")
    if run_dir.exists() and not (run_dir / CHECKPOINT).is_file():
        shutil.rmtree(run_dir)  # an interrupted first round: nothing to keep
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "FEDKSEED_RUN_DIR"}
    t0 = time.perf_counter()
    with open(run_dir / "fit.log", "ab") as log:
        proc = subprocess.run(fit_command(cell, run_dir), stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - t0
    ok = proc.returncode == 0 and is_finished(run_dir)
    return CellResult(cell, run_dir, "done" if ok else "failed", seconds)


def run_grid(cells: list[Cell], out: Path, echo=print, jobs: int = 1) -> list[CellResult]:
    """Run every cell, `jobs` at a time (in grid order); returns one result per cell, in grid order.

    Cells are independent processes, so concurrent cells give the same numbers as one at a time; on one
    GPU they share it (small models leave it mostly idle between kernel launches)."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")

    def one(i: int, cell: Cell) -> CellResult:
        echo(f"[compare] {i}/{len(cells)} {cell.name} ...")
        result = run_cell(cell, out)
        note = {"skipped": "finished before, skipped", "done": f"done in {result.seconds:.0f} s"}
        echo(
            f"[compare] {i}/{len(cells)} {cell.name}: "
            + note.get(result.status, f"FAILED (see {result.run_dir / 'fit.log'})")
        )
        return result

    if jobs == 1:
        return [one(i, cell) for i, cell in enumerate(cells, 1)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads wait on the cells' processes
        return list(pool.map(one, range(1, len(cells) + 1), cells))
