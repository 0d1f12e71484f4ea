"""Rouge-L of a finished cell's final model on a chosen number of held-out examples, scored after the run.

    fedkseed compare -c GRID.yaml --out DIR --rouge 100     # every finished cell, 100 examples per suite

A grid whose cells skip the costly end-of-run generation (`--fed.rouge_at_end false`, e.g. learning curves)
can still be read on Rouge-L: `fedkseed eval --run` rebuilds each cell's final global model (bit-identical,
checked against the run's digest) and scores it on the run's own held-out set, writing
`<run>/eval/final_limit<N>/rouge_<suite>.json` once; a rerun reuses it. The comparison's table then takes
Rouge-L from there (`rouge_n`: the examples scored), so cells of one grid are scored on the same examples
whether or not their run generated at its end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def scores_dir(run_dir: Path, limit: int) -> Path:
    return Path(run_dir) / "eval" / f"final_limit{limit}"


def read_scores(run_dir: Path, limit: int) -> dict[str, dict] | None:
    """Per suite, the scored file's `rougeL`, `rougeL_paper`, `rougeL_paper_recursion_errors` and `n`
    (None when this run has not been scored at `limit`)."""
    files = sorted(scores_dir(run_dir, limit).glob("rouge_*.json"))
    if not files:
        return None
    return {f.stem.removeprefix("rouge_"): json.loads(f.read_text()) for f in files}


def score_run(run_dir: Path, limit: int) -> bool:
    """Score the run's final model at `limit` examples per suite unless done; its output goes to
    `<run>/eval/final_limit<N>.log`. True when the scores are there afterwards."""
    if read_scores(run_dir, limit) is not None:
        return True
    out = scores_dir(run_dir, limit)
    part = out.with_name(out.name + ".part")  # every suite's file appears at once, or none
    shutil.rmtree(part, ignore_errors=True)
    cmd = [sys.executable, "-m", "kit", "eval", "--run", str(run_dir), "--limit", str(limit)]
    part.mkdir(parents=True)
    with open(out.with_suffix(".log"), "ab") as log:
        proc = subprocess.run(
            [*cmd, "--out", str(part), "--no-progress"], stdout=log, stderr=subprocess.STDOUT
        )
    if proc.returncode == 0:
        part.rename(out)
    return read_scores(run_dir, limit) is not None
