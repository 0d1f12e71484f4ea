"""Every method through the real CLI: on the embedded SmolLM2 with the quickstart recipe cut to a round,
and the eval of a run defined by its own data config."""

from __future__ import annotations

import json

import pytest

from kit.cli import main
from kit.methods import METHODS

from .conftest import REPO, fed_args


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_quickstart_with_every_method_trains_smollm2_for_a_round(method, data_root, tmp_path):
    run = tmp_path / method
    main([
        "fit", "-c", str(REPO / "recipes" / "quickstart.yaml"),
        "-c", str(REPO / "recipes" / "methods" / f"{method}.yaml"), "--run_dir", str(run),
        "--data.data_root", str(data_root), "--trainer.max_epochs", "1", "--fed.fraction", "0.005",
        "--fed.local_steps", "2", "--fed.local_epochs", "null", "--data.eval_size", "4",
        "--fed.rouge_at_end", "false", "--fed.rouge_at_start", "false", "--fed.progress", "false",
        *(["--fed.num_seeds", "16"] if method == "ferret" else []),  # K bases per block: CPU time
    ])  # fmt: skip
    s = json.loads((run / "summary.json").read_text())
    assert s["method"] == method and s["finished"] and s["rounds"] == 1
    up, down = s["uplink_bytes_per_client_round"]["mean"], s["downlink_bytes_per_round"]
    assert up > 0 and down > 0 and s["total_bytes"] == up + down  # one client, one round
    assert s["eval_loss_before"] != s["eval_loss_after"]  # the global model moved
    if method.startswith("fedkseed"):
        assert up <= s["uplink_bytes_dense"]
    elif method == "ferret":  # a few coefficients per block, never more than K per block
        assert 40 + 14 * s["blocks"] <= up <= s["uplink_bytes_max"] < s["shared_parameters"]
    elif method in ("decomfl", "feedsign"):  # tau x P float32 scalars / tau sign bits, in the FKSD frame
        assert up == s["uplink_bytes_max"] and 0 < down <= up
    else:
        # tensors: at least 4 bytes per shared float32 parameter, plus the header and table
        assert s["wire_dtype"] == "float32" and up > 4 * s["shared_parameters"]


@pytest.fixture(scope="module")
def creative_writing_run(tiny_model_dir, data_root, tmp_path_factory):
    """A tiny Dolly run holding out creative_writing (not the default summarization), 3 eval examples."""
    run = tmp_path_factory.mktemp("heldout") / "run"
    args = fed_args(tiny_model_dir, data_root, run, rounds=1)
    args += ["--data.dataset", "dolly", "--data.num_clients", "10", "--data.eval_size", "3",
             "--data.heldout_category", "creative_writing", "--fed.rouge_limit", "null",
             "--fed.fraction", "0.1"]  # fmt: skip
    main(args)
    return run


def test_rouge_scores_the_runs_own_heldout_category(creative_writing_run):
    run = creative_writing_run
    rows = [json.loads(line) for line in (run / "eval" / "round_1" / "generations_dolly.jsonl").open()]
    assert len(rows) == 3  # the run's eval_size, not a fixed 200
    assert {r["task"] for r in rows} == {"creative_writing"}  # the run's held-out category
    settings = json.loads((run / "eval" / "round_1" / "rouge_dolly.json").read_text())["settings"]
    assert settings["heldout_category"] == "creative_writing" and settings["dolly_size"] == 3


def test_eval_of_a_run_scores_the_runs_own_heldout_set(creative_writing_run, tmp_path, capsys, monkeypatch):
    run, out = creative_writing_run, tmp_path / "eval"
    monkeypatch.delenv("FEDKSEED_DATA_ROOT", raising=False)  # the data root is the run's data.data_root
    main(["eval", "--run", str(run), "--out", str(out), "--no-progress"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(printed) == ["dolly"]  # the run's dataset only, not both suites
    rows = [json.loads(line) for line in (out / "generations_dolly.jsonl").open()]
    assert len(rows) == 3 and {r["task"] for r in rows} == {"creative_writing"}
    settings = json.loads((out / "rouge_dolly.json").read_text())["settings"]
    assert (settings["heldout_category"], settings["dolly_size"], settings["seed"]) == (
        "creative_writing",
        3,
        42,
    )
    # the loop's own eval of the same global model: same examples, same generations, same scores
    loop = [json.loads(line) for line in (run / "eval" / "round_1" / "generations_dolly.jsonl").open()]
    assert rows == loop
    s = json.loads((run / "summary.json").read_text())
    assert printed["dolly"]["rougeL"] == s["rougeL"]["dolly"]
    assert printed["dolly"]["rougeL_paper"] == s["rougeL_paper"]["dolly"]
    # an option given on the command line still wins over the run's
    main(["eval", "--run", str(run), "--out", str(tmp_path / "two"), "--no-progress", "--dolly-size", "2"])
    assert len((tmp_path / "two" / "generations_dolly.jsonl").read_text().splitlines()) == 2
