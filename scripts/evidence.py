"""Run the evidence grids of docs/results.md: FedKSeed's lr sweep first, then every method and the K sweep
at the chosen lr, under one wall-clock deadline; then the tables, curves and the four figures.

    export FEDKSEED_DATA_ROOT=../shared/data
    .venv/bin/python scripts/evidence.py --out runs/evidence --jobs 8                     # one GPU
    .venv/bin/python scripts/evidence.py --scale cpu --out runs/evidence-cpu --jobs 2     # a 2-core CPU
    .venv/bin/python scripts/evidence.py --out runs/evidence --figures-only   # figures from finished cells

The lr: the sweep's (recipes/compare/evidence-lr.yaml) lowest eval loss at the last round that every
finished-or-running cell reached (a diverged cell, NaN or rising above its start, never wins). It is
written into `OUT/scenario.yaml` (the scenario with that `model.lr`); the other grids run on that copy.
Run again to go on: finished cells are kept (`fedkseed compare` skips them), unfinished ones resume.
`--extra` arguments go to every cell (e.g. `--trainer.accelerator gpu`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kit.metrics_csv import read_rows  # noqa: E402

SCENARIO = REPO / "recipes" / "evidence-dolly-smollm2.yaml"
SCALES = {"gpu": "evidence", "cpu": "evidence-cpu"}  # the grids: recipes/compare/<prefix>-{lr,methods,k}.yaml


def grid_file(scale: str, name: str) -> Path:
    return REPO / "recipes" / "compare" / f"{SCALES[scale]}-{name}.yaml"


def derived_grid(scale: str, name: str, out: Path, scenario: Path, extra: list[str]) -> Path:
    """`OUT/<name>.grid.yaml`: the shipped grid on `scenario`, `extra` appended to its arguments."""
    spec = yaml.safe_load(grid_file(scale, name).read_text())
    spec["scenarios"] = {key: [str(scenario)] for key in spec["scenarios"]}
    spec["args"] = [*spec.get("args", []), *extra]
    spec["method_recipes"] = str(REPO / "recipes" / "methods")
    path = out / f"{name}.grid.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def compare(grid: Path, out: Path, jobs: int, report: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kit", "compare", "-c", str(grid), "--out", str(out), "--jobs", str(jobs)]
    log = open(out.with_suffix(".log"), "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [*cmd, *(["--report"] if report else [])],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_all(procs: list[subprocess.Popen], deadline: float) -> None:
    """Wait for `procs`; at `deadline` kill each with its cells (a killed cell resumes next time)."""
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(2)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def eval_curve(run_dir: Path) -> dict[int, float]:
    """round -> eval loss, from the run's metrics.csv (empty when it has none yet)."""
    try:
        rows = read_rows(run_dir / "metrics.csv")
    except (OSError, ValueError):
        return {}
    return {int(r["round"]): float(r["eval/loss"]) for r in rows if r.get("eval/loss")}


def choose_lr(sweep: Path, variants: dict[str, list[str]], default: float) -> tuple[float, dict]:
    """The variant lr with the lowest eval loss at the last round all cells reached, and the table;
    `default` (the scenario's) when no round after 0 was reached by every cell (nothing to compare)."""
    curves = {}
    for name, args in variants.items():
        lr = float(args[args.index("--model.lr") + 1])
        runs = list((sweep / f"dolly@{name}").glob("*/seed*"))
        curves[lr] = eval_curve(runs[0]) if runs else {}
    reached = [max(c) for c in curves.values() if c]
    if not reached:
        raise SystemExit(f"no sweep cell measured an eval loss: see {sweep}/*/*/*/fit.log")
    at = min(reached)
    if at == 0:
        return default, {"compared_at_round": 0, "chosen": default, "fallback": "the scenario's lr"}

    def score(c: dict[int, float]) -> float:
        loss = c.get(at, math.nan)
        return math.inf if not math.isfinite(loss) or loss > c.get(0, math.inf) else loss

    best = min((lr for lr, c in curves.items() if c), key=lambda lr: score(curves[lr]))
    table = {"compared_at_round": at, "eval_loss": {str(lr): c for lr, c in curves.items()}, "chosen": best}
    return best, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", choices=list(SCALES), default="gpu", help="which grids (see SCALES)")
    parser.add_argument("--jobs", type=int, default=4, help="cells at once, over all grids")
    parser.add_argument("--deadline-s", type=float, default=math.inf, help="stop (and keep) everything then")
    parser.add_argument("--sweep-s", type=float, default=math.inf, help="at most this long for the lr sweep")
    parser.add_argument("--lr", type=float, default=None, help="this lr, no sweep (e.g. a longer sweep's)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="arguments for every cell")
    parser.add_argument("--figures-only", action="store_true")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    end = time.monotonic() + args.deadline_s
    t0 = time.monotonic()
    if not args.figures_only:
        if args.lr is None:
            grid = derived_grid(args.scale, "lr", out, SCENARIO, args.extra)
            wait_all([compare(grid, out / "lr", args.jobs)], min(end, time.monotonic() + args.sweep_s))
            variants = yaml.safe_load(grid_file(args.scale, "lr").read_text())["variants"]
            default = float(yaml.safe_load(SCENARIO.read_text())["model"]["lr"])
            lr, table = choose_lr(out / "lr", variants, default)
        else:
            lr, table = args.lr, {"chosen": args.lr, "given": True}
        (out / "lr.json").write_text(json.dumps(table, indent=1))
        scenario = yaml.safe_load(SCENARIO.read_text())
        scenario["model"]["lr"] = lr
        (out / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
        print(f"[evidence] lr {lr} (sweep {time.monotonic() - t0:.0f} s): {out / 'lr.json'}", flush=True)
        methods = derived_grid(args.scale, "methods", out, out / "scenario.yaml", args.extra)
        ks = derived_grid(args.scale, "k", out, out / "scenario.yaml", args.extra)
        if args.jobs < 3:  # few cores: the methods first, then K
            wait_all([compare(methods, out / "methods", args.jobs)], end)
            wait_all([compare(ks, out / "k", args.jobs)], end)
        else:
            k_jobs = args.jobs // 3
            wait_all(
                [compare(methods, out / "methods", args.jobs - k_jobs), compare(ks, out / "k", k_jobs)], end
            )
    for name in ("lr", "methods", "k"):  # tables and curves of what finished
        grid = out / f"{name}.grid.yaml"
        if grid.is_file():
            wait_all([compare(grid, out / name, 1, report=True)], math.inf)
    from evidence_figures import make_figures

    make_figures(out, out / "figures")
    print(f"[evidence] done in {time.monotonic() - t0:.0f} s: {out}", flush=True)


if __name__ == "__main__":
    main()
