"""The quickstart recipe on the real embedded SmolLM2-135M and the shipped Dolly, cut to one short round."""

from __future__ import annotations

import json

import pytest

from kit.cli import main

from .conftest import REPO, rouge_from_generations


@pytest.mark.slow
def test_quickstart_recipe_runs_a_real_round(data_root, tmp_path):
    run = tmp_path / "quickstart"
    main([
        "fit", "-c", str(REPO / "recipes" / "quickstart.yaml"), "--run_dir", str(run),
        "--data.data_root", str(data_root), "--trainer.max_epochs", "1", "--fed.fraction", "0.005",
        "--fed.local_steps", "2", "--data.eval_size", "4", "--fed.rouge_limit", "2",
        "--fed.progress", "false",
    ])  # fmt: skip
    s = json.loads((run / "summary.json").read_text())
    assert s["finished"] and s["rounds"] == 1 and s["K"] == 1024
    # two local steps touch at most two seeds: sparse uplink = 36-byte frame + 2 x (u16 index + f32)
    assert s["uplink_bytes_per_client_round"]["max"] <= 36 + 2 * 6 < 18 * 1024
    assert s["skipped_steps"] == 0 and all(loss > 0 for loss in s["train_loss_per_round"])
    assert s["eval_loss_before"] > 0 and s["eval_loss_after"] > 0
    assert s["eval_loss_before"] != s["eval_loss_after"]  # the global model moved
    generations = run / "eval" / "round_1" / "generations_dolly.jsonl"
    assert len(generations.read_text().splitlines()) == 2
    assert s["rougeL"]["dolly"] == pytest.approx(rouge_from_generations(generations), rel=1e-12, abs=1e-12)
    # the recipe's rouge_at_start: the base model scored on the same examples before training
    base = run / "eval" / "round_0" / "generations_dolly.jsonl"
    same = [
        {k: v for k, v in json.loads(x).items() if k != "prediction"} for x in base.read_text().splitlines()
    ]
    tuned = [
        {k: v for k, v in json.loads(x).items() if k != "prediction"}
        for x in generations.read_text().splitlines()
    ]
    assert same == tuned and len(same) == 2
    assert s["rougeL_before"]["dolly"] == pytest.approx(rouge_from_generations(base), rel=1e-12, abs=1e-12)
    assert [r["round"] for r in s["rougeL_per_round"]] == [0, 1]
