"""The privacy-utility figure of docs/results.md from a finished `recipes/compare/privacy-cpu.yaml` grid.

    .venv/bin/python scripts/privacy_figure.py docs/results/privacy-cpu     # the committed runs

Reads `ROOT/comparison.csv` (written by `fedkseed compare`; one row per finished run, scenario
`<name>@<variant>` with variants `eps-inf`, `eps8`, `eps2`) and writes `ROOT/figures/privacy.png` (final
eval loss and Rouge-L against the target epsilon, per method, mean ± std over seeds) and
`ROOT/figures/privacy.json` (every number the text quotes: per method and variant the seeds, the
accountant's epsilon, sigma, eval loss before/after, both Rouge-L scorers and the uplink bytes).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kit.compare.stats import mean_std  # noqa: E402
from kit.compare.table import read_csv  # noqa: E402

VARIANTS = {"eps-inf": "∞", "eps8": "8", "eps2": "2"}  # the grid's variants, least private first
KEYS = (
    "dp_epsilon",
    "dp_noise_multiplier",
    "eval_loss_before",
    "eval_loss_after",
    "rougeL",
    "rougeL_paper",
    "uplink_bytes_per_client_round",
)


def privacy_numbers(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """Per method, per variant (in `VARIANTS` order): `seeds` and, for each of `KEYS`, [mean, std]."""
    out: dict[str, dict[str, dict]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        per: dict[str, dict] = {}
        for variant in VARIANTS:
            runs = [r for r in rows if r["method"] == method and r["scenario"].endswith(f"@{variant}")]
            if runs:
                per[variant] = {"seeds": len(runs), **{k: _stats([r.get(k) for r in runs]) for k in KEYS}}
        out[method] = per
    return out


def _stats(values: list[float | None]) -> list:
    """[mean, std] (std None below two seeds); an infinite epsilon (no noise) as [inf, None]."""
    if values and all(v is not None and math.isinf(v) for v in values):
        return [math.inf, None]
    return list(mean_std(values))


def draw(numbers: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in zip(
        axes,
        ("eval_loss_after", "rougeL_paper"),
        ("eval loss after the last round", "Rouge-L (paper scorer)"),
        strict=True,
    ):
        for i, (method, per) in enumerate(numbers.items()):
            xs = [
                j + 0.06 * (i - 0.5)
                for j, v in enumerate(VARIANTS)
                if v in per and per[v][key][0] is not None
            ]
            got = [per[v][key] for v in VARIANTS if v in per and per[v][key][0] is not None]
            ax.errorbar(
                xs, [m for m, _ in got], yerr=[s or 0 for _, s in got], fmt="o-", capsize=3, label=method
            )
        before = [p[key.replace("after", "before")][0] for per in numbers.values() for p in per.values()]
        if key == "eval_loss_after" and before and before[0] is not None:
            ax.axhline(before[0], color="k", ls="--", lw=1, label="base model")
            ax.set_yscale("log")  # a collapsed model sits an order of magnitude above the others
        ax.set_xticks(range(len(VARIANTS)), [f"ε = {e}" for e in VARIANTS.values()])
        ax.set(title=label, xlabel="target ε (δ = 1e-5), central DP")
        ax.legend(fontsize=8)
    fig.suptitle("Utility under client-level DP (mean ± std over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    numbers = privacy_numbers(read_csv(root / "comparison.csv"))
    draw(numbers, root / "figures" / "privacy.png")
    (root / "figures" / "privacy.json").write_text(json.dumps(numbers, indent=1))
    print(json.dumps(numbers, indent=1))
