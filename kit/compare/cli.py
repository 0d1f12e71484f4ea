"""`fedkseed compare -c GRID.yaml --out DIR`: run a comparison grid and write its tables and plot.

    fedkseed compare -c recipes/compare/smoke.yaml --out runs/compare-smoke
    fedkseed compare -c recipes/compare/cpu-small.yaml --out runs/cpu-small --dry-run   # list the cells
    fedkseed compare -c recipes/compare/cpu-small.yaml --out runs/cpu-small --wandb      # + W&B
    fedkseed compare -c recipes/compare/cpu-small.yaml --out runs/cpu-small --report     # tables only
    fedkseed compare -c recipes/compare/evidence-cpu-methods.yaml --out runs/m --rouge 100  # Rouge-L after
    fedkseed compare -c recipes/compare/successors-cpu.yaml --out runs/m --round 10 --rouge 32  # equal rounds

Writes `DIR/comparison.csv` (a row per run), `DIR/comparison.md` (per method: mean ± std over seeds),
`DIR/comparison.png` (Rouge-L against total bytes), and the learning curves `DIR/curves.csv` and
`DIR/curves.png` (eval loss per round and against cumulative bytes, per method, mean ± std over seeds).
Run it again to finish an interrupted grid: finished cells are skipped. `--rouge N` scores each finished
cell's final model on N held-out examples per suite after its run (`kit.compare.rouge_after`): the tables
then take Rouge-L from those scores. `--round R` compares every cell after round R instead of at its end: eval
loss and bytes from its metrics.csv, Rouge-L of its model rebuilt at that round (a method whose checkpoint
holds its rounds' history); a cell that ran fewer rounds, or cannot be rebuilt at R, is left out and named.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from kit.cli_errors import one_line_argparse
from kit.compare.curves import mean_curves, plot_curves, run_curve, write_curves_csv
from kit.compare.grid import GridError, load_grid
from kit.compare.rouge_after import score_run, scores_dir
from kit.compare.runner import CellResult, is_finished, run_grid
from kit.compare.table import markdown, plot, run_row, summarise, write_csv


def _rows(done: list[CellResult], rouge_limit: int | None, at_round: int | None) -> list[dict]:
    """A row per cell; a cell that cannot be read at `at_round` is named and left out."""
    rows = []
    for r in done:
        try:
            rows.append(
                run_row(r.cell.scenario, r.cell.method, r.cell.seed, r.run_dir, rouge_limit, at_round)
            )
        except ValueError as err:
            print(f"[compare] {r.cell.name} left out: {err}", file=sys.stderr)
    return rows


def write_outputs(
    results, out: Path, title: str, rouge_limit: int | None = None, at_round: int | None = None
) -> list[dict]:
    """comparison.csv/.md/.png and curves.csv/.png from the finished cells; returns the CSV rows."""
    done = [r for r in results if r.status != "failed"]
    rows = _rows(done, rouge_limit, at_round)
    write_csv(rows, out / "comparison.csv")
    summary = summarise(rows)
    (out / "comparison.md").write_text(markdown(summary, title))
    plot(summary, out / "comparison.png", title)
    curves = mean_curves([run_curve(r.cell.scenario, r.cell.method, r.cell.seed, r.run_dir) for r in done])
    write_curves_csv(curves, out / "curves.csv")
    plot_curves(curves, out / "curves.png", title)
    return rows


def score_cell(result: CellResult, limit: int, at_round: int | None = None) -> CellResult:
    """`result` once its final model (or round `at_round`'s) is scored at `limit` examples (`failed` when
    that fails)."""
    if result.status == "failed":
        return result
    print(f"[compare] Rouge-L of {result.cell.name} on {limit} examples ...", flush=True)
    if score_run(result.run_dir, limit, at_round):
        return result
    log = scores_dir(result.run_dir, limit, at_round).with_suffix(".log")
    print(f"[compare] Rouge-L of {result.cell.name} FAILED, see {log}")
    return replace(result, status="failed")


def log_wandb(rows: list[dict], out: Path, title: str, project: str) -> None:
    """The comparison table and plot as one W&B run (WANDB_MODE=offline works without an account)."""
    import wandb

    run = wandb.init(project=project, name=title, job_type="compare", dir=str(out))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    run.log(
        {
            "compare/table": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows]),
            "compare/rougeL_vs_bytes": wandb.Image(str(out / "comparison.png")),
            **(
                {"compare/eval_loss_curves": wandb.Image(str(out / "curves.png"))}
                if (out / "curves.png").is_file()
                else {}
            ),
        }
    )
    run.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedkseed compare", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="grid YAML (see recipes/compare/)")
    parser.add_argument("--out", required=True, help="output folder: one run directory per cell + tables")
    parser.add_argument("--dry-run", action="store_true", help="print each cell's fit command, run nothing")
    parser.add_argument(
        "--report", action="store_true", help="tables and curves of the cells finished so far; run nothing"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="cells run at once (default 1; 4-8 fill a GPU with small models)"
    )
    parser.add_argument(
        "--rouge",
        type=int,
        default=None,
        metavar="N",
        help="score each finished cell's final model on N held-out examples per suite after its run "
        "(once; reused) and take the tables' Rouge-L from there",
    )
    parser.add_argument(
        "--round",
        type=int,
        default=None,
        metavar="R",
        help="compare every cell after round R instead of at its end (eval loss, bytes; with --rouge, its "
        "model rebuilt at R)",
    )
    parser.add_argument("--wandb", action="store_true", help="log the cells and the comparison to W&B")
    parser.add_argument("--wandb_project", default="fedkseed", help="W&B project")
    one_line_argparse(parser, "fedkseed compare")
    args = parser.parse_args(argv)
    try:
        cells = load_grid(args.config)
    except GridError as err:
        print(f"fedkseed compare: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    title = f"{Path(args.config).stem}: {len(cells)} runs"
    if args.wandb:
        cells = [replace(c, argv=(*c.argv, "--wandb", "true")) for c in cells]
    if args.dry_run:
        for cell in cells:
            print(cell.name, "fedkseed fit", " ".join(cell.argv))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for flag, value in (("--jobs", args.jobs), ("--rouge", args.rouge), ("--round", args.round)):
        if value is not None and value < 1:
            print(f"fedkseed compare: error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.report:
        results = [
            CellResult(c, out / c.name, "skipped" if is_finished(out / c.name) else "failed") for c in cells
        ]
    else:
        results = run_grid(cells, out, jobs=args.jobs)
    unscored: list[str] = []
    if args.round:
        title += f", at round {args.round}"
    if args.rouge:
        title += f", Rouge-L on {args.rouge} examples"
        scored = [score_cell(r, args.rouge, args.round) for r in results]
        unscored = [s.cell.name for r, s in zip(results, scored, strict=True) if s.status != r.status]
        results = scored
    rows = write_outputs(results, out, title, args.rouge, args.round)
    if args.wandb:
        log_wandb(rows, out, title, args.wandb_project)
    print(f"[compare] {out / 'comparison.md'}\n" + (out / "comparison.md").read_text())
    failed = [r.cell.name for r in results if r.status == "failed" and r.cell.name not in unscored]
    if unscored:
        print(
            f"[compare] {len(unscored)} cell(s) not scored (left out): {', '.join(unscored)}", file=sys.stderr
        )
    if failed and args.report:
        print(
            f"[compare] {len(failed)} cell(s) not finished (left out): {', '.join(failed)}", file=sys.stderr
        )
    elif failed:
        print(
            f"[compare] {len(failed)} cell(s) failed, see their fit.log: {', '.join(failed)}", file=sys.stderr
        )
        return 1
    return 1 if unscored else 0
