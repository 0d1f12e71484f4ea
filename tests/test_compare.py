"""`fedkseed compare`: grid parsing, the tables' statistics, and an interrupted grid that resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from kit.compare.grid import GridError, load_grid
from kit.compare.table import markdown, mean_std, read_csv, run_row, summarise, write_csv

from .conftest import REPO, rouge_from_generations


def _grid(tmp_path: Path, **spec) -> Path:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("trainer:\n  max_epochs: 1\n")
    spec = {"scenarios": {"s": [str(scenario)]}, "method_recipes": str(REPO / "recipes" / "methods"), **spec}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_cells_compose_scenario_method_seed_and_args(tmp_path):
    path = _grid(
        tmp_path,
        methods=["fedkseed", "fedit"],
        seeds=[3, 4],
        args=["--fed.local_steps", 2],
        method_args={"fedit": ["--model.lr", "1e-4"]},
    )
    cells = load_grid(path)
    assert [c.name for c in cells] == [
        "s/fedkseed/seed3",
        "s/fedkseed/seed4",
        "s/fedit/seed3",
        "s/fedit/seed4",
    ]
    argv = list(cells[3].argv)
    assert argv[:6] == [
        "-c",
        str(tmp_path / "scenario.yaml"),
        "-c",
        str(REPO / "recipes" / "methods" / "fedit.yaml"),
        "--method",
        "fedit",
    ]
    assert argv[6:] == [
        "--seed_everything",
        "4",
        "--fed.seed",
        "4",
        "--fed.local_steps",
        "2",
        "--model.lr",
        "1e-4",
    ]
    assert "--model.lr" not in cells[0].argv  # method_args only reach their method


def test_grid_variants_sweep_each_scenario_with_their_arguments_last(tmp_path):
    path = _grid(
        tmp_path,
        methods=["fedit-sgd"],
        seeds=[0],
        method_args={"fedit-sgd": ["--model.lr", "3e-4"]},
        variants={"lr1e-2": ["--model.lr", "1e-2"], "lr1e-1": ["--model.lr", "0.1"]},
    )
    cells = load_grid(path)  # in the file's order (the helper's safe_dump sorts the keys)
    assert [c.name for c in cells] == ["s@lr1e-1/fedit-sgd/seed0", "s@lr1e-2/fedit-sgd/seed0"]
    # the variant's value comes after the method's own: the last value of a flag wins in `fedkseed fit`
    assert list(cells[1].argv[-4:]) == ["--model.lr", "3e-4", "--model.lr", "1e-2"]
    assert list(cells[0].argv[-2:]) == ["--model.lr", "0.1"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"methods": ["fedsgd"], "seeds": [1]}, "unknown methods ['fedsgd']"),
        ({"methods": ["fedkseed"], "seeds": []}, "'seeds' must be a non-empty list"),
        ({"methods": ["fedkseed"], "seeds": [1, 1]}, "must not repeat"),
        ({"methods": ["fedkseed"], "seeds": [1], "rounds": 3}, "unknown keys ['rounds']"),
        ({"methods": ["fedkseed"], "seeds": [1], "method_args": {"fedit": []}}, "'method_args' must map"),
        ({"methods": ["fedkseed"], "seeds": [1], "variants": ["lr1"]}, "'variants' must map"),
        ({"methods": ["fedkseed"], "seeds": [1], "variants": {"lr1": "1e-3"}}, "variants.lr1 must be a list"),
    ],
)
def test_malformed_grid_is_refused_with_the_key_named(tmp_path, spec, message):
    with pytest.raises(GridError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_grid(_grid(tmp_path, **spec))


def test_missing_scenario_recipe_is_named(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        yaml.safe_dump({"scenarios": {"s": ["nope.yaml"]}, "methods": ["fedkseed"], "seeds": [1]})
    )
    with pytest.raises(GridError, match="recipe 'nope.yaml' not found"):
        load_grid(path)


def test_every_shipped_grid_loads():
    grids = sorted((REPO / "recipes" / "compare").glob("*.yaml"))
    assert {g.stem for g in grids} >= {"smoke", "cpu-small"}
    for grid in grids:
        cells = load_grid(grid)
        assert cells and len({c.name for c in cells}) == len(cells)
    from kit.methods import METHODS

    assert {c.method for c in load_grid(REPO / "recipes" / "compare" / "smoke.yaml")} == set(METHODS)


def test_mean_std_is_the_sample_statistics():
    values = [21.5, 23.25, 19.0]
    mean, std = mean_std([*values, None])
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert mean_std([4.0]) == (4.0, None) and mean_std([None]) == (None, None)


def test_summary_groups_seeds_per_method_and_reports_uplink_ratio():
    def row(method, seed, rouge, up, paper=None, errors=0):
        return {
            "scenario": "d",
            "method": method,
            "seed": seed,
            "rougeL": rouge,
            "rougeL_paper": paper,
            "rougeL_paper_recursion_errors": errors,
            "eval_loss_before": 2.5,
            "eval_loss_after": 2.4,
            "uplink_bytes_per_client_round": up,
            "downlink_bytes_per_round": 10.0,
            "total_bytes": up * 4.0,
            "time_per_round_s": 1.0,
            "peak_memory_bytes": 1e9,
        }

    rows = [
        row("fedkseed", 1, 20.0, 100.0, paper=28.0, errors=1),
        row("fedkseed", 2, 22.0, 100.0, paper=32.0),
        row("fedit", 1, 25.0, 1e7),
    ]
    summary = summarise(rows)
    assert [(s["method"], s["seeds"]) for s in summary] == [("fedkseed", 2), ("fedit", 1)]
    assert summary[0]["rougeL"] == 21.0 and summary[0]["rougeL_std"] == pytest.approx(np.sqrt(2.0))
    assert summary[0]["rougeL_paper"] == 30.0 and summary[0]["rougeL_paper_std"] == pytest.approx(
        np.sqrt(8.0)
    )
    table = markdown(summary, "t")
    assert "| fedkseed | 2 | 21.00 ± 1.41 | 30.00 ± 2.83 (1 RecursionError) |" in table
    assert "| fedit | 1 | 25.00 | — |" in table
    assert "| 100,000× |" in table  # FedIT's uplink over FedKSeed's


def test_run_row_reads_both_scorers_per_suite(tmp_path):
    summary = {
        "rougeL": {"ni": 10.0, "dolly": 20.0},
        "rougeL_paper": {"ni": 4.0, "dolly": 30.0},
        "rougeL_paper_recursion_errors": {"ni": 0, "dolly": 2},
        "total_bytes": 96,
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    row = run_row("s", "fedkseed", 1, tmp_path)
    assert (row["rougeL"], row["rougeL_paper"], row["rougeL_paper_recursion_errors"]) == (15.0, 17.0, 2)
    assert (row["rougeL_paper_ni"], row["rougeL_paper_dolly"]) == (4.0, 30.0)
    write_csv([row], tmp_path / "comparison.csv")
    (back,) = read_csv(tmp_path / "comparison.csv")
    assert back["rougeL_paper"] == 17.0 and back["rougeL_paper_dolly"] == 30.0


def test_run_row_leaves_out_the_rouge_of_an_earlier_round_than_the_last(tmp_path):
    summary = {"rougeL": {"dolly": 20.0}, "rougeL_paper": {"dolly": 30.0}, "rounds": 20, "rougeL_round": 10}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    row = run_row("s", "fedkseed", 1, tmp_path)  # resumed from 10 to 20 rounds without Rouge at its end
    assert row["rougeL"] is None and row["rougeL_paper"] is None and "rougeL_dolly" not in row
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "rougeL_round": 20}))
    assert run_row("s", "fedkseed", 1, tmp_path)["rougeL"] == 20.0
    del summary["rougeL_round"]  # an older summary: the round from its per-round list
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "rougeL_per_round": [{"round": 10}]}))
    assert run_row("s", "fedkseed", 1, tmp_path)["rougeL"] is None


def _tiny_grid(tmp_path: Path, model_dir: Path, data_root: Path) -> Path:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "trainer": {"accelerator": "cpu", "max_epochs": 2},
                "model": {"model": str(model_dir), "lr": 1e-3, "zo_eps": 1e-2},
                "data": {"dataset": "ni", "data_root": str(data_root), "max_length": 128, "eval_size": 8},
                "fed": {"num_seeds": 64, "fraction": 0.05, "local_steps": 2, "rouge_limit": 9},
            }
        )
    )
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "scenarios": {"tiny": [str(scenario)]},
                "methods": ["fedkseed", "fedit"],
                "seeds": [1],
                "method_recipes": str(REPO / "recipes" / "methods"),
            }
        )
    )
    return grid


def _compare(grid: Path, out: Path, *extra: str) -> subprocess.Popen:
    """`fedkseed compare` in its own process group, so that a kill takes its running cell too."""
    cmd = [sys.executable, "-m", "kit", "compare", "-c", str(grid), "--out", str(out), *extra]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    """The output of a compare process run to its end; it and its cells are killed if it overruns."""
    try:
        return proc.communicate(timeout=timeout)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


DETERMINISTIC = ("scenario", "method", "seed", "rougeL", "eval_loss_before", "eval_loss_after", "total_bytes")


@pytest.mark.slow
def test_interrupted_grid_resumes_without_redoing_finished_cells(tiny_model_dir, data_root, tmp_path):
    grid = _tiny_grid(tmp_path, tiny_model_dir, data_root)
    out = tmp_path / "interrupted"
    first = out / "tiny" / "fedkseed" / "seed1" / "summary.json"
    proc = _compare(grid, out)
    try:
        deadline = time.monotonic() + 600
        while not (first.is_file() and json.loads(first.read_text()).get("finished")):
            assert proc.poll() is None and time.monotonic() < deadline, "the first cell never finished"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-grid: the second cell is starting or running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (out / "comparison.csv").exists()
    kept = first.read_bytes()
    from kit.compare.cli import main as compare_main  # --report: the finished cell's row, nothing run

    assert compare_main(["-c", str(grid), "--out", str(out), "--report"]) == 0
    assert [r["method"] for r in read_csv(out / "comparison.csv")] == ["fedkseed"]
    assert first.read_bytes() == kept

    again = _compare(grid, out)
    log = _finish(again)
    assert again.returncode == 0, log
    assert "tiny/fedkseed/seed1: finished before, skipped" in log
    assert first.read_bytes() == kept  # not redone
    assert log.count(": done in") == 1

    fresh = _compare(grid, tmp_path / "uninterrupted", "--jobs", "2")  # both cells at once: same numbers
    assert "2/2" in _finish(fresh) and fresh.returncode == 0
    a, b = read_csv(out / "comparison.csv"), read_csv(tmp_path / "uninterrupted" / "comparison.csv")
    assert len(a) == 2
    assert [[r[k] for k in DETERMINISTIC] for r in a] == [[r[k] for k in DETERMINISTIC] for r in b]
    assert [r["global_weights_sha256"] for r in a] == [r["global_weights_sha256"] for r in b]
    up = {r["method"]: r["uplink_bytes_per_client_round"] for r in a}
    assert up["fedit"] >= 100 * up["fedkseed"]
    assert (out / "comparison.md").read_text().count("| fedit | 1 |") == 1
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # learning curves beside them
    assert len(read_csv(out / "curves.csv")) == 2 * 3  # two methods, rounds 0-2 (eval loss before, after)

    # --rouge at the runs' own limit: their in-loop scores of the same final models, not generated again
    rows = {r["method"]: r for r in a}
    assert compare_main(["-c", str(grid), "--out", str(out), "--report", "--rouge", "9"]) == 0
    assert [r["rougeL"] for r in read_csv(out / "comparison.csv")] == [r["rougeL"] for r in a]
    assert not list(out.glob("tiny/*/seed1/eval/final_limit9"))
    # Rouge-L scored after the runs (--rouge N): the rebuilt final models generate on the runs' own examples
    # what the runs generated at their end, re-scored independently from the generations; scored once
    assert compare_main(["-c", str(grid), "--out", str(out), "--report", "--rouge", "5"]) == 0
    for row in read_csv(out / "comparison.csv"):
        cell = out / "tiny" / row["method"] / "seed1" / "eval"
        files = cell / "final_limit5"
        after = _generations(files / "generations_ni.jsonl")
        assert row["rouge_n"] == len(after) == 5
        assert row["rougeL"] == pytest.approx(
            rouge_from_generations(files / "generations_ni.jsonl"), abs=1e-9
        )
        in_loop = _generations(cell / "round_2" / "generations_ni.jsonl")
        assert after.items() <= in_loop.items(), row["method"]
    stamp = (files / "rouge_ni.json").stat().st_mtime_ns
    assert compare_main(["-c", str(grid), "--out", str(out), "--report", "--rouge", "5"]) == 0
    assert (files / "rouge_ni.json").stat().st_mtime_ns == stamp

    # --round 1: every cell after its first round; FedKSeed's model rebuilt there by replay, FedIT's cannot be
    assert compare_main(["-c", str(grid), "--out", str(out), "--report", "--round", "1"]) == 0
    early = {r["method"]: r for r in read_csv(out / "comparison.csv")}
    for method, run in ((m, out / "tiny" / m / "seed1") for m in rows):
        summary = json.loads((run / "summary.json").read_text())
        assert (
            early[method]["rounds"] == 1
            and early[method]["eval_loss_after"] == summary["eval_loss_per_round"][0]
        )
        assert early[method]["total_bytes"] < rows[method]["total_bytes"]
    assert compare_main(["-c", str(grid), "--out", str(out), "--report", "--round", "1", "--rouge", "5"]) == 1
    scored = read_csv(out / "comparison.csv")
    assert [r["method"] for r in scored] == ["fedkseed"] and scored[0]["rouge_n"] == 5
    files = out / "tiny" / "fedkseed" / "seed1" / "eval" / "round1_limit5"
    assert scored[0]["rougeL"] == pytest.approx(
        rouge_from_generations(files / "generations_ni.jsonl"), abs=1e-9
    )
    log = out / "tiny" / "fedit" / "seed1" / "eval" / "round1_limit5.log"
    assert "fedit keeps its last global state" in log.read_text()  # named, and the cell left out


def _generations(path: Path) -> dict[tuple, str]:
    """A generations file's predictions by example (task, prompt)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r.get("task"), r.get("prompt") or r.get("input")): r["prediction"] for r in rows}


def test_comparison_logs_to_wandb_offline(tmp_path, monkeypatch):
    from kit.compare.cli import log_wandb
    from kit.compare.table import plot

    monkeypatch.setenv("WANDB_MODE", "offline")
    rows = [{"scenario": "s", "method": "fedkseed", "seed": 1, "rougeL": 20.0, "total_bytes": 96}]
    summary = [{**rows[0], "seeds": 1, "rougeL_std": None, "total_bytes_std": None}]
    plot(summary, tmp_path / "comparison.png", "t")
    log_wandb(rows, tmp_path, "t", "fedkseed-test")
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (table,) = run.glob("files/media/table/compare/*.table.json")
    assert json.loads(table.read_text()) == {
        "columns": ["scenario", "method", "seed", "rougeL", "total_bytes"],
        "data": [["s", "fedkseed", 1, 20.0, 96]],
    }
    assert len(list(run.glob("files/media/images/compare/rougeL_vs_bytes_*.png"))) == 1
