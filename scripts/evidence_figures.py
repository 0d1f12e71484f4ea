"""The four figures of docs/results.md and their numbers, from the evidence grids' run directories.

    .venv/bin/python scripts/evidence_figures.py docs/results/evidence          # the committed runs
    .venv/bin/python scripts/evidence_figures.py runs/evidence                  # a fresh scripts/evidence.py
    .venv/bin/python scripts/evidence_figures.py runs/evidence-cpu 100     # Rouge-L of `compare --rouge 100`

Reads `ROOT/methods/**` and `ROOT/k/**` (each run's summary.json and metrics.csv; finished runs only) and
writes `ROOT/figures/fig{1..4}-*.png` and `ROOT/figures/numbers.json` (every value the text quotes).
Figure 4 reads every method at the last round all of them ran (`compare --round`): eval loss and bytes there,
and with N the Rouge-L scores at N examples of that round's models (`compare --round R --rouge N`).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kit.compare.colors import method_color  # noqa: E402
from kit.compare.curves import draw_curves, mean_curves, run_curve  # noqa: E402
from kit.compare.stats import mean_std  # noqa: E402
from kit.compare.table import run_row  # noqa: E402
from kit.metrics_csv import read_rows  # noqa: E402

VIRTUAL_TOKENS = {"fedprompt", "fedptuning"}  # their round 0 already has random prompts: not the base model
ZO_CORE = ["fedkseed", "fedkseed-pro", "fedzo"]  # figures 1-3's methods, in both parts of figure 4
FIGURE_4 = {  # file stem -> (title, methods): the paper's baselines, and the methods published after it
    "fig4-baselines": (
        "Figure 4: the paper's baselines",
        [*ZO_CORE, "fedit", "fedit-sgd", "fedavg", "fedprompt", "fedptuning"],
    ),
    "fig4a-successors": (
        "Figure 4a: the methods after FedKSeed",
        [*ZO_CORE, "ferret", "decomfl", "feedsign"],
    ),
}
# every method of the figures, in their order
METHODS_ORDER = list(dict.fromkeys(m for _, group in FIGURE_4.values() for m in group))


def finished_runs(grid_dir: Path) -> list[tuple[str, str, int, Path]]:
    """(scenario, method, seed, run dir) of every finished run under `grid_dir` (scenario/method/seedN)."""
    runs = []
    for summary in sorted(grid_dir.glob("*/*/seed*/summary.json")):
        if json.loads(summary.read_text()).get("finished"):
            run = summary.parent
            runs.append((run.parent.parent.name, run.parent.name, int(run.name[4:]), run))
    return runs


def k_sweep(runs) -> tuple[dict[int, list[float]], int]:
    """Per K (summary.json's), the runs' eval losses at the last round that every run measured."""
    curves = {run: run_curve("", "", 0, run) for *_, run in runs}
    common = min((c.rounds[-1] for c in curves.values() if c.rounds), default=0)
    per_k: dict[int, list[float]] = {}
    for run, curve in curves.items():
        loss = dict(zip(curve.rounds, curve.eval_loss, strict=True)).get(common)
        if loss is not None:
            per_k.setdefault(int(json.loads((run / "summary.json").read_text())["K"]), []).append(loss)
    return per_k, common


def drop_over_spread(rows: list[dict]) -> dict | None:
    """Over the comparison rows of one method's seeds: the mean drop of the final eval loss below the
    start, its std, and their ratio (figure 1's criterion: the drop is several times the spread); None
    below two seeds."""
    drops = [r["eval_loss_before"] - r["eval_loss_after"] for r in rows]
    if len(drops) < 2:
        return None
    mean, std = mean_std(drops)
    return {"seeds": len(drops), "drop": mean, "std": std, "ratio": mean / std if std else math.inf}


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _final(rows: list[dict], key: str) -> dict[str, tuple[float | None, float | None, int]]:
    """Per method: mean, std and count over seeds of the comparison rows' `key` (`kit.compare.table`)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if row.get(key) is not None:
            values.setdefault(row["method"], []).append(float(row[key]))
    return {m: (*mean_std(v), len(v)) for m, v in values.items()}


def method_figure(final: dict, group: list[str], title: str, path: Path) -> None:
    """Figure 4's two panels for the methods of `group` found in `final` (`make_figures`' per-method
    mean, std and count at the common round): eval loss bars, and Rouge-L (paper scorer) against bytes."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_rouge) = plt.subplots(1, 2, figsize=(13, 4.5))
    after, total, rouge, before = (
        final[k] for k in ("eval_loss_after", "total_bytes", "rougeL_paper", "eval_loss_before")
    )
    shown = [m for m in group if m in after]
    ax_loss.bar(
        shown,
        [after[m][0] for m in shown],
        yerr=[after[m][1] or 0 for m in shown],
        capsize=3,
        color=[method_color(m) for m in shown],
    )
    base = [v[0] for m, v in before.items() if m not in VIRTUAL_TOKENS]
    if base:
        ax_loss.axhline(statistics.fmean(base), color="k", ls="--", label="base model")
        ax_loss.legend()
    low = min(after[m][0] - (after[m][1] or 0) for m in shown)
    ax_loss.set(title="eval loss (mean ± std over seeds)", ylim=(low - 0.05, None))
    ax_loss.tick_params(axis="x", rotation=30)
    for m in (m for m in shown if m in rouge and m in total):
        ax_rouge.errorbar(
            total[m][0],
            rouge[m][0],
            yerr=rouge[m][1] or 0,
            fmt="o",
            capsize=3,
            color=method_color(m),
            label=m,
        )
    ax_rouge.set(
        title="Rouge-L (paper scorer) against bytes", xscale="log", xlabel="total bytes", ylabel="Rouge-L"
    )
    if ax_rouge.lines:
        ax_rouge.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def make_figures(root: Path, out: Path, rouge_limit: int | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = finished_runs(root / "methods")
    table = [run_row(*r) for r in methods]  # each run at its end: figure 1's drop
    curves = mean_curves([run_curve(*r) for r in methods])
    numbers: dict = {"runs": {m: sum(1 for r in methods if r[1] == m) for m in METHODS_ORDER}}

    def curve_rows(keep: set[str]) -> list[dict]:
        return [r for r in curves if r["method"] in keep]

    # 1: a finite pool follows FedZO (eval loss against rounds and bytes)
    if curve_rows({"fedkseed", "fedzo"}):
        _save(
            draw_curves(curve_rows({"fedkseed", "fedzo"}), "Figure 1: FedKSeed vs FedZO"),
            out / "fig1-pool.png",
        )
    numbers["drop_over_seed_spread"] = {
        m: drop_over_spread([r for r in table if r["method"] == m]) for m in METHODS_ORDER
    }
    pro_probs = {  # seed -> Pro's sorted probabilities after each round
        seed: json.loads((run / "summary.json").read_text())["pro_probabilities_sorted"]
        for _, method, seed, run in methods
        if method == "fedkseed-pro"
    }
    # 3: Pro vs FedKSeed, and Pro's probability spread per round
    if curve_rows({"fedkseed-pro"}):  # a figure only where its claim has runs
        pro = curve_rows({"fedkseed", "fedkseed-pro"})
        _save(draw_curves(pro, "Figure 3: FedKSeed-Pro vs FedKSeed"), out / "fig3-pro.png")
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for seed, per_round in pro_probs.items():
            p = per_round[-1]
            ax.plot(range(1, len(p) + 1), [len(p) * v for v in p], label=f"seed {seed}")
        ax.axhline(1.0, color="k", ls="--", lw=1, label="uniform (FedKSeed)")
        ax.set(
            xlabel="seed rank",
            ylabel="K x probability",
            title="Figure 3b: Pro's seed probabilities, last round",
        )
        ax.legend(fontsize=8, loc="upper right")  # "best" searches every one of the K points
        fig.tight_layout()
        _save(fig, out / "fig3-pro-probabilities.png")
    spread: dict[int, list[float]] = {}
    for _, method, _, run in methods:
        if method == "fedkseed-pro":
            for row in read_rows(run / "metrics.csv"):
                if row.get("pro/p_max_over_min"):
                    spread.setdefault(int(float(row["round"])), []).append(float(row["pro/p_max_over_min"]))
    numbers["pro_p_max_over_min"] = {r: mean_std(v) for r, v in sorted(spread.items())}
    effective: dict[int, list[float]] = {}  # exp(entropy) / K: 1 for uniform sampling
    for per_round in pro_probs.values():
        for r, p in enumerate(per_round, 1):
            h = -sum(v * math.log(v) for v in p if v > 0)
            effective.setdefault(r, []).append(math.exp(h) / len(p))
    numbers["pro_effective_seed_fraction"] = {r: mean_std(v) for r, v in sorted(effective.items())}
    # 4: every method at equal rounds (the last every run reached): eval loss, Rouge-L against total bytes
    common = min((r["rounds"] for r in table), default=0)
    at_common = [run_row(*r, rouge_limit, common) for r in methods] if common else []
    numbers["equal_round"] = common
    numbers["final"] = {
        key: _final(at_common, key)
        for key in ("eval_loss_before", "eval_loss_after", "rougeL", "rougeL_paper", "total_bytes")
    }
    for stem, (title, group) in FIGURE_4.items():
        if {m for _, m, _, _ in methods} & (set(group) - set(ZO_CORE)):  # a figure only where its methods ran
            method_figure(
                numbers["final"], group, f"{title} after round {common}", out / f"{stem}-methods.png"
            )
            shown = [r for r in curves if r["method"] in group and r["round"] <= common]
            _save(
                draw_curves(shown, f"{title}: eval loss curves to round {common}"), out / f"{stem}-curves.png"
            )
    # 2: K sweep at the last round every K run measured (K = 1024: the methods grid's FedKSeed)
    k_runs = [*finished_runs(root / "k"), *(r for r in methods if r[1] == "fedkseed")]
    per_k, k_round = k_sweep(k_runs)
    numbers["k_sweep_round"] = k_round
    numbers["k_sweep_eval_loss"] = {k: (*mean_std(v), len(v)) for k, v in sorted(per_k.items())}
    if len(per_k) > 1:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        xs = sorted(per_k)
        ms = [mean_std(per_k[k]) for k in xs]
        ax.errorbar(xs, [m for m, _ in ms], yerr=[s or 0 for _, s in ms], fmt="o-", capsize=3)
        ax.set(xscale="log", xlabel="K (seed pool size)", ylabel=f"eval loss after round {k_round}")
        ax.set_xticks(xs, [str(k) for k in xs])
        ax.set_title("Figure 2: FedKSeed's K (mean ± std over seeds)")
        fig.tight_layout()
        _save(fig, out / "fig2-k.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "numbers.json").write_text(json.dumps(numbers, indent=1, default=str))
    return numbers


if __name__ == "__main__":
    root = Path(sys.argv[1])
    rouge_limit = int(sys.argv[2]) if len(sys.argv) > 2 else None  # `compare --rouge N`'s scores
    print(json.dumps(make_figures(root, root / "figures", rouge_limit), indent=1, default=str))
