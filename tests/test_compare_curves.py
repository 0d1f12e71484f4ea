"""Learning curves of `fedkseed compare` built from a tiny grid's run directories, checked against the
runs' own metrics.csv and summary.json."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from kit.cli import main
from kit.compare.cli import write_outputs
from kit.compare.curves import CURVE_COLUMNS, RunCurve, mean_curves
from kit.compare.grid import load_grid
from kit.compare.runner import CellResult
from kit.compare.table import read_csv

from .conftest import REPO

ROUNDS = 3


@pytest.fixture(scope="module")
def tiny_grid(tiny_model_dir, data_root, tmp_path_factory) -> Path:
    """Two methods x two seeds, 3 rounds, eval loss every round; FedIT with client dropout (so that not
    every sampled client's uplink arrives). Cells run in this process; outputs as `fedkseed compare`."""
    root = tmp_path_factory.mktemp("curves")
    scenario = root / "tiny.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "trainer": {"accelerator": "cpu", "max_epochs": ROUNDS},
                "model": {"model": str(tiny_model_dir), "lr": 1e-3, "zo_eps": 1e-2},
                "data": {"dataset": "ni", "data_root": str(data_root), "max_length": 128, "eval_size": 8},
                "fed": {"num_seeds": 64, "fraction": 0.1, "local_steps": 2, "eval_every": 1},
            }
        )
    )
    grid = root / "grid.yaml"
    spec = {
        "scenarios": {"tiny": [str(scenario)]},
        "methods": ["fedkseed", "fedit"],
        "seeds": [1, 2],
        "method_recipes": str(REPO / "recipes" / "methods"),
        "args": ["--fed.rouge_at_end", "false"],
        "method_args": {"fedit": ["--fed.dropout", "0.5"]},
    }
    grid.write_text(yaml.safe_dump(spec))
    out = root / "out"
    results = []
    for cell in load_grid(grid):
        run_dir = out / cell.name
        main(["fit", "--fed.progress", "false", *cell.argv, "--run_dir", str(run_dir)])
        results.append(CellResult(cell, run_dir, "done"))
    write_outputs(results, out, "tiny")
    return out


def _metrics(run_dir: Path) -> dict[int, dict[str, str]]:
    """metrics.csv read directly: per round, its non-empty values."""
    rows: dict[int, dict[str, str]] = {}
    with (run_dir / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(int(row["round"]), {}).update({k: v for k, v in row.items() if v})
    return rows


def _curves(out: Path) -> dict[tuple[str, int], dict]:
    with (out / "curves.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CURVE_COLUMNS)
    return {(r["method"], int(r["round"])): r for r in rows}


def test_curves_are_the_seed_mean_and_spread_of_each_runs_metrics(tiny_grid):
    curves = _curves(tiny_grid)
    assert sorted(curves) == [(m, r) for m in ("fedit", "fedkseed") for r in range(ROUNDS + 1)]
    for method in ("fedkseed", "fedit"):
        runs = [tiny_grid / "tiny" / method / f"seed{seed}" for seed in (1, 2)]
        metrics = [_metrics(run) for run in runs]
        for rnd in range(ROUNDS + 1):
            losses = [float(m[rnd]["eval/loss"]) for m in metrics]
            row = curves[(method, rnd)]
            assert int(row["seeds"]) == 2
            assert float(row["eval_loss"]) == pytest.approx(statistics.fmean(losses), rel=1e-12)
            assert float(row["eval_loss_std"]) == pytest.approx(statistics.stdev(losses), rel=1e-9)
        assert float(curves[(method, 0)]["cumulative_bytes"]) == 0.0  # before training
        # after the last round: each run's summary.json total_bytes (its own count of every uplink that
        # arrived plus each round's downlink), averaged over the seeds
        totals = [json.loads((run / "summary.json").read_text())["total_bytes"] for run in runs]
        assert float(curves[(method, ROUNDS)]["cumulative_bytes"]) == pytest.approx(statistics.fmean(totals))
        sent = [float(curves[(method, r)]["cumulative_bytes"]) for r in range(ROUNDS + 1)]
        assert sent == sorted(sent) and sent[1] > 0
    dropped = sum(
        float(m["fed/dropped"])
        for run in ("seed1", "seed2")
        for m in _metrics(tiny_grid / "tiny" / "fedit" / run).values()
        if "fed/dropped" in m
    )
    assert dropped > 0  # the bytes count above covered rounds where some clients' uplinks never came
    assert (tiny_grid / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_rebuild_from_comparison_csv(tiny_grid):
    from kit.compare.curves import grid_curves

    rebuilt = grid_curves(read_csv(tiny_grid / "comparison.csv"))
    written = _curves(tiny_grid)
    assert len(rebuilt) == len(written)
    for row in rebuilt:
        assert row["eval_loss"] == pytest.approx(float(written[(row["method"], row["round"])]["eval_loss"]))


def test_mean_curves_average_only_the_seeds_that_measured_a_round():
    a = RunCurve("s", "m", 1, (0, 2), (3.0, 2.0), (0, 100))
    b = RunCurve("s", "m", 2, (0, 1, 2), (3.5, 2.9, 2.4), (0, 40, 120))
    rows = {r["round"]: r for r in mean_curves([a, b])}
    assert rows[1]["seeds"] == 1 and rows[1]["eval_loss"] == 2.9 and rows[1]["eval_loss_std"] is None
    assert rows[2]["eval_loss"] == pytest.approx(2.2) and rows[2]["cumulative_bytes"] == 110.0
    assert rows[2]["eval_loss_std"] == pytest.approx(statistics.stdev([2.0, 2.4]))


def test_a_method_keeps_its_colour_whichever_methods_share_the_figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_rgba

    from kit.compare.curves import draw_curves
    from kit.methods import METHODS

    def line_colours(methods: list[str]) -> dict[str, tuple]:
        curves = [RunCurve("s", m, 0, (0, 1), (3.0, 2.5), (0, 100)) for m in methods]
        fig = draw_curves(mean_curves(curves))
        return {line.get_label().split(" (")[0]: to_rgba(line.get_color()) for line in fig.axes[0].lines}

    every = line_colours(list(METHODS))
    assert len(set(every.values())) == len(METHODS)  # no two methods alike
    assert line_colours(["fedit", "fedkseed"]) == {m: every[m] for m in ("fedit", "fedkseed")}
    assert line_colours(["feedsign", "fedkseed"]) == {m: every[m] for m in ("feedsign", "fedkseed")}
