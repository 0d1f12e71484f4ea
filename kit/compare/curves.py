"""Learning curves of a comparison: eval loss per round and against cumulative bytes, per method.

    from kit.compare.curves import grid_curves, plot_curves
    from kit.compare.table import read_csv
    plot_curves(grid_curves(read_csv(Path("runs/grid/comparison.csv"))), Path("curves.png"), "grid")

Each run's curve comes from its own `metrics.csv` (one row per round; round 0 is the eval loss before
training): the eval loss of every round that measured one (`eval/loss`), and the bytes communicated up
to the end of that round, counted as `summary.json`'s `total_bytes` counts them (every arrived client's
uplink plus the round's downlink, once). Curves of the same (scenario, method) are averaged over seeds
round by round: mean and sample standard deviation (n - 1), as the comparison table.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kit.compare.colors import method_color
from kit.compare.stats import mean_std
from kit.metrics_csv import ROUND, read_rows

CURVE_COLUMNS = (
    "scenario",
    "method",
    "round",
    "seeds",
    "eval_loss",
    "eval_loss_std",
    "cumulative_bytes",
    "cumulative_bytes_std",
)


@dataclass(frozen=True)
class RunCurve:
    """One run's eval loss at the rounds that measured it, and the bytes sent up to each such round."""

    scenario: str
    method: str
    seed: int
    rounds: tuple[int, ...]
    eval_loss: tuple[float, ...]
    cumulative_bytes: tuple[int | None, ...]  # None: a round so far has no byte counts in metrics.csv


def round_bytes(row: dict[str, str]) -> int | None:
    """Bytes a round moved, from its metrics.csv row: the mean uplink times the clients that arrived
    (sampled - dropped - late), plus the downlink once; None when the row lacks these columns."""
    needed = ("fed/sampled", "fed/dropped", "fed/late", "fed/uplink_bytes_mean", "fed/downlink_bytes")
    if not all(row.get(key) for key in needed):
        return None
    arrived = float(row["fed/sampled"]) - float(row["fed/dropped"]) - float(row["fed/late"])
    return round(float(row["fed/uplink_bytes_mean"]) * arrived) + round(float(row["fed/downlink_bytes"]))


def run_curve(scenario: str, method: str, seed: int, run_dir: Path) -> RunCurve:
    """The curve of the run in `run_dir` (its metrics.csv; empty when it has none)."""
    per_round: dict[int, dict[str, str]] = {}
    for row in read_rows(Path(run_dir) / "metrics.csv"):
        if row.get(ROUND):
            # the loop logs one row per round; keep the last non-empty value of each column
            merged = per_round.setdefault(int(float(row[ROUND])), {})
            merged.update({k: v for k, v in row.items() if v not in ("", None)})
    rounds, losses, sent, total = [], [], [], 0
    for rnd in sorted(per_round):
        row = per_round[rnd]
        if rnd > 0:
            moved = round_bytes(row)
            total = None if total is None or moved is None else total + moved
        if row.get("eval/loss"):
            rounds.append(rnd)
            losses.append(float(row["eval/loss"]))
            sent.append(total)
    return RunCurve(scenario, method, seed, tuple(rounds), tuple(losses), tuple(sent))


def mean_curves(curves: Sequence[RunCurve]) -> list[dict]:
    """Rows of `CURVE_COLUMNS`: per (scenario, method) in first-seen order and per round, the mean and
    sample std over the seeds that measured the round (std None below two seeds)."""
    groups: dict[tuple[str, str], list[RunCurve]] = {}
    for c in curves:
        groups.setdefault((c.scenario, c.method), []).append(c)
    rows = []
    for (scenario, method), runs in groups.items():
        points = [
            dict(zip(c.rounds, zip(c.eval_loss, c.cumulative_bytes, strict=True), strict=True)) for c in runs
        ]
        for rnd in sorted({r for c in runs for r in c.rounds}):
            at = [p[rnd] for p in points if rnd in p]
            loss, loss_std = mean_std([loss for loss, _ in at])
            sent, sent_std = mean_std([None if sent is None else float(sent) for _, sent in at])
            values = (scenario, method, rnd, len(at), loss, loss_std, sent, sent_std)
            rows.append(dict(zip(CURVE_COLUMNS, values, strict=True)))
    return rows


def grid_curves(rows: Sequence[dict]) -> list[dict]:
    """`mean_curves` of the runs named by comparison.csv rows (`scenario`, `method`, `seed`, `run_dir`)."""
    return mean_curves(
        [run_curve(r["scenario"], r["method"], int(r["seed"]), Path(r["run_dir"])) for r in rows]
    )


def write_curves_csv(rows: Sequence[dict], path: Path) -> None:
    """curves.csv: one row per (scenario, method, round)."""
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CURVE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def draw_curves(rows: Sequence[dict], title: str = ""):
    """A matplotlib Figure: per scenario (a row of panels), eval loss against rounds and against
    cumulative bytes (log x; round 0 has sent nothing and is left out there), one line per method,
    mean ± std band over seeds. Uses the current backend (inline in a notebook)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    scenarios = list(dict.fromkeys(r["scenario"] for r in rows)) or [""]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(13, 4.5 * len(scenarios)), squeeze=False)
    for (by_round, by_bytes), scenario in zip(axes, scenarios, strict=True):
        for method in methods:
            pts = [r for r in rows if r["scenario"] == scenario and r["method"] == method]
            if not pts:
                continue
            label = f"{method} (n={max(p['seeds'] for p in pts)})"
            sent = [p for p in pts if _spread(p["cumulative_bytes"]) > 0]  # known and not round 0
            for ax, x_key, shown in ((by_round, "round", pts), (by_bytes, "cumulative_bytes", sent)):
                if not shown:
                    continue
                x = [p[x_key] for p in shown]
                y = [p["eval_loss"] for p in shown]
                spread = [_spread(p["eval_loss_std"]) for p in shown]
                ax.plot(x, y, marker="o", markersize=3, color=method_color(method), label=label)
                low = [m - d for m, d in zip(y, spread, strict=True)]
                high = [m + d for m, d in zip(y, spread, strict=True)]
                ax.fill_between(x, low, high, color=method_color(method), alpha=0.2, linewidth=0)
        by_round.set(title=f"{scenario}: eval loss per round", xlabel="round (0: before training)")
        by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
        by_bytes.set(
            title=f"{scenario}: eval loss against bytes sent",
            xlabel="cumulative communicated bytes (up + down, log scale)",
            xscale="log",
        )
        for ax in (by_round, by_bytes):
            ax.set_ylabel("eval loss (mean ± std over seeds)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _spread(std: float | None) -> float:
    """A band's half width: 0 for one seed (std None, or NaN once the rows went through pandas)."""
    return 0.0 if std is None or math.isnan(std) else std


def plot_curves(rows: Sequence[dict], path: Path, title: str) -> None:
    """curves.png: `draw_curves` written to `path` (headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw_curves(rows, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
