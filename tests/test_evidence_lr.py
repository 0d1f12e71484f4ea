"""scripts/evidence.py's lr choice: the lowest eval loss at the last round every sweep cell reached."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from .conftest import REPO

VARIANTS = {f"lr{v}": ["--model.lr", v] for v in ("1e-4", "3e-5", "1e-5")}


def _evidence():
    spec = importlib.util.spec_from_file_location("evidence", REPO / "scripts" / "evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(root: Path, variant: str, losses: dict[int, float]) -> None:
    run = root / f"dolly@{variant}" / "fedkseed" / "seed0"
    run.mkdir(parents=True)
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["round", "eval/loss"])
        writer.writeheader()
        writer.writerows({"round": r, "eval/loss": v} for r, v in losses.items())


def test_the_lowest_loss_at_the_common_round_wins_and_a_rise_above_the_start_never(tmp_path):
    choose_lr = _evidence().choose_lr
    _cell(tmp_path, "lr1e-4", {0: 2.0, 2: 1.5, 4: 2.2})  # best at round 2, above its start at 4
    _cell(tmp_path, "lr3e-5", {0: 2.0, 2: 1.9, 4: 1.95})
    _cell(tmp_path, "lr1e-5", {0: 2.0, 2: 1.97, 4: 1.96, 6: 1.9})  # further, compared at round 4
    lr, table = choose_lr(tmp_path, VARIANTS, 9.9)
    # compared at round 4 (the last every cell reached): 1e-4 is above its start, 3e-5's 1.95 < 1.96
    assert (lr, table["compared_at_round"], table["chosen"]) == (3e-5, 4, 3e-5)
    _cell(tmp_path / "b", "lr1e-4", {0: 2.0, 2: 1.5, 4: 1.94})  # now 1e-4 is lowest at round 4
    _cell(tmp_path / "b", "lr3e-5", {0: 2.0, 2: 1.9, 4: 1.95})
    assert choose_lr(tmp_path / "b", VARIANTS, 9.9)[0] == 1e-4  # the missing 1e-5 cell is left out


def test_no_round_past_the_start_falls_back_to_the_scenarios_lr(tmp_path):
    choose_lr = _evidence().choose_lr
    for variant in VARIANTS:
        _cell(tmp_path, variant, {0: 2.0})
    lr, table = choose_lr(tmp_path, VARIANTS, 1e-5)
    assert (lr, table["fallback"]) == (1e-5, "the scenario's lr")
