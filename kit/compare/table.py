"""The comparison's outputs from its cells' run directories: a CSV row per run, a Markdown summary per
method (mean ± std over seeds), and a plot of Rouge-L against total communicated bytes.

Rouge-L comes by both scorers (eval/rouge.py): `rougeL` (rouge-score, the kit's) and `rougeL_paper`
(pltrdy, the paper's), with the count of pairs the paper's scorer could not score (RecursionError, 0).

Every figure comes from the run's own `summary.json` (and `metrics.csv` for the time per round), so a
table can be rebuilt at any time from the run directories alone.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from kit.compare.colors import method_color
from kit.compare.curves import run_curve
from kit.compare.rouge_after import read_scores
from kit.compare.stats import mean_std

COLUMNS = (
    "scenario",
    "method",
    "seed",
    "rougeL",
    "rougeL_paper",
    "rougeL_paper_recursion_errors",
    "eval_loss_before",
    "eval_loss_after",
    "uplink_bytes_per_client_round",
    "downlink_bytes_per_round",
    "total_bytes",
    "rounds",
    "time_per_round_s",
    "wall_time_s",
    "peak_memory_bytes",
    "global_weights_sha256",
    "run_dir",
)


def _round_times(run_dir: Path) -> dict[int, float]:
    """The training time of each round (`time/round_s` of metrics.csv), by round."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("time/round_s")]
    return {int(float(r["round"])): float(r["time/round_s"]) for r in rows}


def _at_round(
    scenario: str,
    method: str,
    seed: int,
    run_dir: Path,
    summary: dict,
    times: dict[int, float],
    at_round: int,
) -> dict:
    """The row's numbers of the global model after round `at_round` (from metrics.csv): its eval loss,
    the bytes moved up to it, the mean of `times` (by round) up to it; the whole run's wall time and digest
    left out."""
    if at_round > (summary.get("rounds") or 0):
        raise ValueError(f"{run_dir} ran {summary.get('rounds')} rounds, fewer than --round {at_round}")
    curve = run_curve(scenario, method, seed, run_dir)
    if at_round not in curve.rounds:
        raise ValueError(
            f"{run_dir} has no eval loss at round {at_round} (rounds {list(curve.rounds)}): pick one of those"
        )
    i = curve.rounds.index(at_round)
    upto = [t for r, t in times.items() if r <= at_round]
    last = at_round == summary.get("rounds")
    return {
        "eval_loss_after": curve.eval_loss[i],
        "total_bytes": curve.cumulative_bytes[i],
        "rounds": at_round,
        "time_per_round_s": statistics.fmean(upto) if upto else None,
        "wall_time_s": summary.get("wall_time_s") if last else None,
        "global_weights_sha256": summary.get("global_weights_sha256") if last else None,
    }


def _rouge_round(summary: dict) -> int | None:
    """The round of the run's own Rouge-L of a trained model (older summaries: from its per-round list)."""
    if "rougeL_round" in summary:
        return summary["rougeL_round"]
    return max((e["round"] for e in summary.get("rougeL_per_round") or [] if e["round"] > 0), default=None)


def _own_rouge(summary: dict, at_round: int | None) -> tuple[dict, dict, dict]:
    """The run's own Rouge-L (both scorers) and RecursionErrors per suite, of the final model or, with
    `at_round`, of that round's; empty when the run did not score that model."""
    if at_round is not None and at_round != summary.get("rounds"):

        def of_round(key: str) -> dict:
            entry = next((e for e in summary.get(key) or [] if e["round"] == at_round), {})
            return {suite: v for suite, v in entry.items() if suite != "round"}

        return of_round("rougeL_per_round"), of_round("rougeL_paper_per_round"), {}
    wanted = summary.get("rounds")
    if None not in (_rouge_round(summary), wanted) and _rouge_round(summary) != wanted:
        return {}, {}, {}  # scored at an earlier round than the last (resumed to more rounds without it)
    rouge, paper = summary.get("rougeL") or {}, summary.get("rougeL_paper") or {}
    return rouge, paper, summary.get("rougeL_paper_recursion_errors") or {}


def run_row(
    scenario: str,
    method: str,
    seed: int,
    run_dir: Path,
    rouge_limit: int | None = None,
    at_round: int | None = None,
) -> dict:
    """One CSV row from a finished run directory; `rougeL` and `rougeL_paper` are means over the scored
    suites, each suite also gets its own `rougeL_<suite>` and `rougeL_paper_<suite>` columns.

    `rouge_limit`: Rouge-L from the model's scores at that many examples (`kit.compare.rouge_after`;
    none when not scored) instead of the run's own Rouge-L; `rouge_n` gives the examples. `at_round`: the
    numbers of the global model after that round instead of the final one (methods compared at equal
    rounds). Every number of a row is of the same model: a run's own Rouge-L of another round is left out."""
    s = json.loads((run_dir / "summary.json").read_text())
    rouge, paper, errors = _own_rouge(s, at_round)
    scored = (read_scores(run_dir, rouge_limit, at_round) or {}) if rouge_limit else {}
    if rouge_limit:
        rouge = {suite: r["rougeL"] for suite, r in scored.items()}
        paper = {suite: r["rougeL_paper"] for suite, r in scored.items()}
        errors = {suite: r["rougeL_paper_recursion_errors"] for suite, r in scored.items()}
    times = _round_times(run_dir)
    row = {
        "scenario": scenario,
        "method": method,
        "seed": seed,
        "rougeL": statistics.fmean(rouge.values()) if rouge else None,
        "rougeL_paper": statistics.fmean(paper.values()) if paper else None,
        "rougeL_paper_recursion_errors": sum(errors.values()) if paper else None,
        "eval_loss_before": s.get("eval_loss_before"),
        "eval_loss_after": s.get("eval_loss_after"),
        "uplink_bytes_per_client_round": (s.get("uplink_bytes_per_client_round") or {}).get("mean"),
        "downlink_bytes_per_round": s.get("downlink_bytes_per_round"),
        "total_bytes": s.get("total_bytes"),
        "rounds": s.get("rounds"),
        "time_per_round_s": statistics.fmean(times.values()) if times else None,
        "wall_time_s": s.get("wall_time_s"),
        "peak_memory_bytes": s.get("peak_gpu_bytes") or s.get("peak_rss_bytes"),
        "global_weights_sha256": s.get("global_weights_sha256"),
        "run_dir": str(run_dir),
    }
    if at_round is not None:
        row.update(_at_round(scenario, method, seed, run_dir, s, times, at_round))
    if rouge_limit:
        row["rouge_n"] = min((r["n"] for r in scored.values()), default=None)
    privacy = s.get("privacy")
    if privacy:  # a DP run (kit/privacy): its epsilon (None in summary.json: infinite) and noise
        eps = privacy["epsilon"]
        row.update(
            {
                "dp_epsilon": math.inf if eps is None else eps,
                "dp_noise_multiplier": privacy["noise_multiplier"],
            }
        )
    row.update({f"rougeL_{suite}": score for suite, score in sorted(rouge.items())})
    row.update({f"rougeL_paper_{suite}": score for suite, score in sorted(paper.items())})
    return row


def write_csv(rows: Sequence[dict], path: Path) -> None:
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS[:6], *extra, *COLUMNS[6:]])
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """comparison.csv back as rows (numbers as floats, empty cells as None)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    text = {"scenario", "method", "run_dir", "global_weights_sha256"}
    return [{k: (v if k in text else (float(v) if v != "" else None)) for k, v in r.items()} for r in rows]


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per (scenario, method), in first-seen order: seeds, Rouge-L (both scorers) and eval loss mean/std,
    the paper scorer's RecursionErrors summed over seeds, bytes, time."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["method"]), []).append(r)
    out = []
    for (scenario, method), rs in groups.items():
        stat = {}
        for key in (
            "rougeL",
            "rougeL_paper",
            "eval_loss_after",
            "eval_loss_before",
            "total_bytes",
            "time_per_round_s",
        ):
            stat[key], stat[f"{key}_std"] = mean_std([r.get(key) for r in rs])
        errors = [r.get("rougeL_paper_recursion_errors") for r in rs]
        stat["rougeL_paper_recursion_errors"] = int(sum(e or 0 for e in errors))
        for key in ("uplink_bytes_per_client_round", "downlink_bytes_per_round", "peak_memory_bytes"):
            stat[key] = mean_std([r[key] for r in rs])[0]
        out.append({"scenario": scenario, "method": method, "seeds": len(rs), **stat})
    return out


def _num(value: float | None, std: float | None = None, digits: int = 2) -> str:
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def _times(ratio: float) -> str:
    """A ratio for the table: whole above 10 (thousands separated), two significant digits below."""
    return f"{ratio:,.0f}×" if ratio >= 10 else f"{ratio:.2g}×"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def markdown(summary: Sequence[dict], title: str) -> str:
    """comparison.md: one table per scenario, a row per method."""
    lines = [f"# {title}", ""]
    lines.append("Mean ± sample std over seeds. Bytes are payload bytes (the wire messages' own lengths).")
    lines.append(
        "Rouge-L: rouge-score (the kit's); paper's: pltrdy rouge 1.0.1 on the same generations (the paper's "
        "Table 2 scorer; n RecursionError: pairs it could not score, counted as 0). See docs/rouge.md."
    )
    for scenario in dict.fromkeys(s["scenario"] for s in summary):
        rows = [s for s in summary if s["scenario"] == scenario]
        ref = next((s for s in rows if s["method"] == "fedkseed"), None)
        lines += ["", f"## {scenario}", ""]
        lines.append(
            "| method | seeds | Rouge-L | Rouge-L (paper's) | eval loss after | eval loss before "
            "| uplink / client / round | downlink / round | total bytes | uplink vs FedKSeed | s / round "
            "| peak memory |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in rows:
            up = s["uplink_bytes_per_client_round"]
            ratio = _times(up / ref["uplink_bytes_per_client_round"]) if ref and up else "—"
            errors = s["rougeL_paper_recursion_errors"]
            paper = _num(s["rougeL_paper"], s["rougeL_paper_std"]) + (
                f" ({errors} RecursionError)" if errors else ""
            )
            lines.append(
                f"| {s['method']} | {s['seeds']} | {_num(s['rougeL'], s['rougeL_std'])} | {paper} "
                f"| {_num(s['eval_loss_after'], s['eval_loss_after_std'], 4)} "
                f"| {_num(s['eval_loss_before'], s['eval_loss_before_std'], 4)} "
                f"| {human_bytes(up)} | {human_bytes(s['downlink_bytes_per_round'])} "
                f"| {human_bytes(s['total_bytes'])} | {ratio} "
                f"| {_num(s['time_per_round_s'], digits=1)} | {human_bytes(s['peak_memory_bytes'])} |"
            )
    return "\n".join(lines) + "\n"


def plot(summary: Sequence[dict], path: Path, title: str) -> None:
    """comparison.png: Rouge-L (mean, error bar = std over seeds) against total bytes (log scale), one
    marker per method, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(s["scenario"] for s in summary)) or ["no finished run yet"]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 4.5), squeeze=False)
    markers = "osD^vP*Xh<>"
    methods = list(dict.fromkeys(s["method"] for s in summary))
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        for s in (s for s in summary if s["scenario"] == scenario):
            if s["rougeL"] is None or not s["total_bytes"]:
                continue
            i = methods.index(s["method"])
            ax.errorbar(
                s["total_bytes"],
                s["rougeL"],
                yerr=s["rougeL_std"] or 0.0,
                xerr=s["total_bytes_std"] or 0.0,
                fmt=markers[i % len(markers)],
                color=method_color(s["method"]),
                capsize=4,
                markersize=8,
                label=f"{s['method']} (n={s['seeds']})",
            )
        ax.set_xscale("log")
        ax.set_xlabel("total communicated bytes (up + down, whole run)")
        ax.set_ylabel("Rouge-L (0-100)")
        ax.set_title(scenario)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
