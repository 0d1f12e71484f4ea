"""`python -m eval` end to end on the real SmolLM2 and data: the scores it prints and the files it writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eval.cli import main
from kit.paths import DATA_ROOT_ENV

from .conftest import paper_rouge_from_generations

DATA_ROOT = Path(os.environ.get(DATA_ROOT_ENV) or Path(__file__).parents[1].parent / "shared" / "data")


@pytest.mark.slow
@pytest.mark.skipif(not DATA_ROOT.is_dir(), reason=f"no data root at {DATA_ROOT}; set ${DATA_ROOT_ENV}")
def test_eval_cli_writes_generations_and_scores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--data-root", str(DATA_ROOT), "--limit", "2", "--max-new-tokens", "4", "--out", str(tmp_path)]
    main([*argv, "--suite", "ni", "--suite", "dolly", "--no-progress"])

    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"ni", "dolly"}
    for suite in ("ni", "dolly"):
        lines = (tmp_path / f"generations_{suite}.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        summary = json.loads((tmp_path / f"rouge_{suite}.json").read_text())
        assert len(rows) == summary["n"] == printed[suite]["n"] == 2
        assert set(rows[0]) == {"prompt", "reference", "prediction", "task", "rougeL", "rougeL_paper"}
        mean = 100 * sum(row["rougeL"] for row in rows) / len(rows)
        assert summary["rougeL"] == pytest.approx(mean) == pytest.approx(printed[suite]["rougeL"])
        paper = paper_rouge_from_generations(tmp_path / f"generations_{suite}.jsonl")  # pltrdy, independently
        assert (
            summary["rougeL_paper"] == pytest.approx(paper) == pytest.approx(printed[suite]["rougeL_paper"])
        )
        assert (
            summary["rougeL_paper_recursion_errors"] == printed[suite]["rougeL_paper_recursion_errors"] == 0
        )
        assert sum(task["n"] for task in summary["per_task"].values()) == 2
        assert summary["settings"]["max_new_tokens"] == 4
        assert len({row["task"] for row in rows}) == len(summary["per_task"])
