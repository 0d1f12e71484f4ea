"""Every notebook in notebooks/ runs headless on two tiny real runs (FedKSeed and FedKSeed-Pro)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit.cli import main
from kit.compare.table import run_row, write_csv

from .conftest import REPO, fed_args

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, data_root, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for method in ("fedkseed", "fedkseed-pro"):
        run = root / method
        main(fed_args(tiny_model_dir, data_root, run, rounds=2) + ["--method", method])
        runs.append(run)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path: Path, two_runs, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("FEDKSEED_RUNS", os.pathsep.join(map(str, two_runs)))  # the kernel inherits it
    compare = tmp_path / "compare"  # a `fedkseed compare` folder over the same two runs
    compare.mkdir()
    write_csv([run_row("tiny", run.name, 1, run) for run in two_runs], compare / "comparison.csv")
    monkeypatch.setenv("FEDKSEED_COMPARE", str(compare))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    if path.name != "analysis.ipynb":
        return
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
    table_cell = next(c for c in nb.cells if "comparison_table(" in c.source)
    table = "".join(o["data"].get("text/html", "") for o in table_cell.outputs if "data" in o)
    assert "fedkseed-pro" in table and table.replace("fedkseed-pro", "").count("fedkseed") >= 1
    grid_cell = next(c for c in nb.cells if c.cell_type == "code" and "FEDKSEED_COMPARE" in c.source)
    grid = "".join(o["data"].get("text/html", "") for o in grid_cell.outputs if "data" in o)
    assert "fedkseed-pro" in grid and "rougeL_std" in grid
    assert sum("image/png" in o.get("data", {}) for o in grid_cell.outputs) == 2  # Rouge-L vs bytes, curves
    curves_cell = next(c for c in nb.cells if c.cell_type == "code" and "learning_curves(" in c.source)
    assert any("image/png" in o.get("data", {}) for o in curves_cell.outputs)
    curves = "".join(o["data"].get("text/html", "") for o in curves_cell.outputs if "data" in o)
    assert "fedkseed-pro" in curves and "cumulative_bytes" in curves
