"""The numbers behind docs/results.md's figures: scripts/evidence_figures.py (figure 1's drop against the
seed spread, figure 2's K sweep at a common round) and scripts/privacy_figure.py (utility per epsilon)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest

from kit.compare.table import run_row

from .conftest import REPO


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root: Path, k: int, losses: dict[int, float]) -> Path:
    run = root / f"K{k}-{len(list(root.glob('*')))}"
    run.mkdir(parents=True)
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["round", "eval/loss"])
        writer.writeheader()
        writer.writerows({"round": r, "eval/loss": v} for r, v in losses.items())
    before, after = losses[min(losses)], losses[max(losses)]
    summary = {"K": k, "finished": True, "eval_loss_before": before, "eval_loss_after": after}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_the_k_sweep_compares_every_k_at_the_last_round_all_of_them_measured(tmp_path):
    figures = _script("evidence_figures")
    long = _run(tmp_path, 1024, {0: 2.0, 10: 1.9, 20: 1.5})  # a longer run: its round 20 must not be used
    short = [_run(tmp_path, 16, {0: 2.0, 5: 1.97, 10: v}) for v in (1.95, 1.93)]
    per_k, common = figures.k_sweep([("s", "fedkseed", i, run) for i, run in enumerate([long, *short])])
    assert common == 10
    assert per_k == {1024: [1.9], 16: [1.95, 1.93]}


def test_figure_one_reports_the_mean_drop_over_its_seed_spread(tmp_path):
    figures = _script("evidence_figures")
    ends = (1.98, 1.97, 1.99)
    runs = [("s", "fedkseed", i, _run(tmp_path, 1024, {0: 2.0, 10: e})) for i, e in enumerate(ends)]
    runs = [run_row(*r) for r in runs]  # the comparison rows make_figures builds
    got = figures.drop_over_spread(runs)
    drops = [2.0 - e for e in ends]
    assert got["seeds"] == 3
    assert got["drop"] == pytest.approx(sum(drops) / 3)
    assert got["std"] == pytest.approx(statistics.stdev(drops))
    assert got["ratio"] == pytest.approx(0.02 / 0.01)  # drops 0.02, 0.03, 0.01: mean 0.02, sample std 0.01
    assert figures.drop_over_spread(runs[:1]) is None  # one seed has no spread


def test_privacy_numbers_group_per_method_and_epsilon_variant_least_private_first():
    figures = _script("privacy_figure")
    rows = [
        {
            "scenario": f"dolly@{v}",
            "method": m,
            "dp_epsilon": eps,
            "eval_loss_after": loss,
            "rougeL_paper": 20.0,
        }
        for v, eps, m, loss in [
            ("eps2", 1.99, "fedkseed", 2.4),
            ("eps-inf", math.inf, "fedkseed", 2.0),
            ("eps-inf", math.inf, "fedkseed", 2.2),
            ("eps8", 7.9, "fedit", 3.0),
        ]
    ]
    got = figures.privacy_numbers(rows)
    assert list(got) == ["fedkseed", "fedit"]
    assert list(got["fedkseed"]) == ["eps-inf", "eps2"]  # the grid's order, only variants that ran
    inf = got["fedkseed"]["eps-inf"]
    assert inf["seeds"] == 2 and inf["dp_epsilon"] == [math.inf, None]
    assert inf["eval_loss_after"] == pytest.approx([2.1, statistics.stdev([2.0, 2.2])])
    assert got["fedkseed"]["eps2"]["eval_loss_after"] == [2.4, None]  # one seed: no std
    assert got["fedit"]["eps8"]["dp_epsilon"] == [7.9, None]
