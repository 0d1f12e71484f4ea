"""Rouge-L of a finished cell's model on a chosen number of held-out examples, scored after the run.

    fedkseed compare -c GRID.yaml --out DIR --rouge 100              # every cell's final model
    fedkseed compare -c GRID.yaml --out DIR --rouge 32 --round 10    # every cell's model after round 10

A grid whose cells skip the costly end-of-run generation (`--fed.rouge_at_end false`, e.g. learning curves)
can still be read on Rouge-L: `fedkseed eval --run` rebuilds each cell's global model (bit-identical,
checked against the run's digest; `--round R` for an earlier round) and scores it on the run's own held-out
set, writing `<run>/eval/final_limit<N>/` (or `round<R>_limit<N>/`) once; a rerun reuses it. A run that
scored that model on as many examples in its own loop (`<run>/eval/round_<R>/`) is not scored again: the same
model on the same examples gives the same generations. The comparison's table takes Rouge-L from there
(`rouge_n`: the examples scored), so cells of one grid are scored on the same examples whether or not their
run generated at its end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def scores_dir(run_dir: Path, limit: int, at_round: int | None = None) -> Path:
    name = f"final_limit{limit}" if at_round is None else f"round{at_round}_limit{limit}"
    return Path(run_dir) / "eval" / name


def _read(folder: Path) -> dict[str, dict]:
    return {
        f.stem.removeprefix("rouge_"): json.loads(f.read_text()) for f in sorted(folder.glob("rouge_*.json"))
    }


def _own_scores(run_dir: Path, limit: int, at_round: int | None) -> dict[str, dict] | None:
    """The run's own in-loop scores of that round's model at `limit` examples, if it made them."""
    summary = Path(run_dir) / "summary.json"
    if at_round is None and summary.is_file():
        at_round = json.loads(summary.read_text()).get("rounds")
    scores = _read(Path(run_dir) / "eval" / f"round_{at_round}") if at_round else {}
    if scores and all((s.get("settings") or {}).get("limit") == limit for s in scores.values()):
        return scores
    return None


def read_scores(run_dir: Path, limit: int, at_round: int | None = None) -> dict[str, dict] | None:
    """Per suite, the `rougeL`, `rougeL_paper`, `rougeL_paper_recursion_errors` and `n` of the final model
    (or round `at_round`'s) at `limit` examples: scored after the run, else in its loop; None if neither."""
    return _read(scores_dir(run_dir, limit, at_round)) or _own_scores(run_dir, limit, at_round)


def score_run(run_dir: Path, limit: int, at_round: int | None = None) -> bool:
    """Score the run's final model (or round `at_round`'s) at `limit` examples per suite unless done; its
    output goes to `<scores dir>.log`. True when the scores are there afterwards."""
    if read_scores(run_dir, limit, at_round) is not None:
        return True
    out = scores_dir(run_dir, limit, at_round)
    part = out.with_name(out.name + ".part")  # every suite's file appears at once, or none
    shutil.rmtree(part, ignore_errors=True)
    cmd = [sys.executable, "-m", "kit", "eval", "--run", str(run_dir), "--limit", str(limit)]
    cmd += [] if at_round is None else ["--round", str(at_round)]
    part.mkdir(parents=True)
    with open(out.with_suffix(".log"), "ab") as log:
        proc = subprocess.run(
            [*cmd, "--out", str(part), "--no-progress"], stdout=log, stderr=subprocess.STDOUT
        )
    if proc.returncode == 0:
        part.rename(out)
    return read_scores(run_dir, limit, at_round) is not None
