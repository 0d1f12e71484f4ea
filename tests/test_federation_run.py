"""End-to-end federations through the real CLI on a tiny random Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit.cli import main

from .conftest import FEDIT_ONE_EPOCH_KEEP, REPO, paper_rouge_from_generations, rouge_from_generations
from .conftest import fed_args as _args


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_run_writes_config_metrics_checkpoint_and_summary(tiny_model_dir, data_root, tmp_path):
    run = tmp_path / "run"
    main(_args(tiny_model_dir, data_root, run, rounds=2))
    s = _summary(run)
    assert s["rounds"] == 2 and s["K"] == 64 and s["finished"]
    assert s["clients_per_round"] == 2 and len(s["train_loss_per_round"]) == 2
    assert 0 < s["uplink_bytes_per_client_round"]["max"] <= s["uplink_bytes_dense"]
    assert s["downlink_bytes_per_round"] > 4 * 64  # Pro downlinks carry K probabilities
    assert s["eval_loss_before"] > 0 and s["eval_loss_after"] > 0
    assert len(s["pro_probabilities_sorted"]) == 2
    # zero-shot Rouge-L of the final model, one example per NI test task, as rouge-score scores it
    generations = run / "eval" / "round_2" / "generations_ni.jsonl"
    assert len(generations.read_text().splitlines()) == 9
    assert s["rougeL"]["ni"] == pytest.approx(rouge_from_generations(generations), rel=1e-12, abs=1e-12)
    paper = paper_rouge_from_generations(generations)  # the same generations, the paper's scorer
    assert s["rougeL_paper"]["ni"] == pytest.approx(paper, rel=1e-12, abs=1e-12)
    assert s["rougeL_paper_recursion_errors"] == {"ni": 0}
    assert s["rougeL_paper_per_round"] == [{"round": 2, "ni": s["rougeL_paper"]["ni"]}]
    assert s["rougeL_round"] == 2  # the trained model's Rouge-L is of the last round
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and ckpt.stat().st_size < 200_000  # seed history, not weights
    assert not list(run.glob(".global_weights*"))  # the snapshot is cleaned up


def test_resume_reproduces_uninterrupted_run(tiny_model_dir, data_root, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    main(_args(tiny_model_dir, data_root, full, rounds=3))
    main(_args(tiny_model_dir, data_root, part, rounds=2))
    main(
        _args(tiny_model_dir, data_root, part, rounds=3)
        + ["--ckpt_path", str(part / "checkpoints" / "last.ckpt")]
    )
    a, b = _summary(full), _summary(part)
    assert b["rounds"] == 3
    assert a["global_weights_sha256"] == b["global_weights_sha256"]
    assert a["train_loss_per_round"] == b["train_loss_per_round"]
    assert a["eval_loss_per_round"] == b["eval_loss_per_round"]
    assert a["pro_probabilities_sorted"] == b["pro_probabilities_sorted"]
    assert a["rougeL"] == b["rougeL"] and a["rougeL_paper"] == b["rougeL_paper"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        [],
        FEDIT_ONE_EPOCH_KEEP,  # clients of unequal step counts: padding to the busiest process
        # the per-step seed methods: their server applies tau x P scalars / tau majority signs per round
        ["--method", "decomfl", "--model.zo_perturbations", "2", "--model.zo_estimator", "forward"],
        ["--method", "feedsign"],
        # first-order steps projected on K bases per block, reconstructed by the server
        ["--method", "ferret", "--fed.num_seeds", "16", "--fed.rouge_at_end", "false"],
    ],
    ids=["fedkseed-pro-steps", "fedit-epochs", "decomfl", "feedsign", "ferret"],
)
def test_two_processes_match_one(extra, tiny_model_dir, data_root, tmp_path):
    env = {**os.environ, "FEDKSEED_DATA_ROOT": str(data_root)}
    env.pop("FEDKSEED_RUN_DIR", None)
    if extra:
        # backpropagation's CPU reductions differ in the last bits with the thread count, and Lightning gives
        # each of 2 processes half the cores: the same count for both runs isolates the round plan
        env["OMP_NUM_THREADS"] = "1"
    summaries = []
    for devices in (1, 2):
        run = tmp_path / f"devices{devices}"
        args = _args(tiny_model_dir, data_root, run) + [
            "--fed.fraction",
            "0.1",
            "--trainer.devices",
            str(devices),
            "--trainer.strategy",
            "fed_ddp" if devices > 1 else "auto",
            *extra,
        ]
        subprocess.run([sys.executable, "-m", "kit", *args], cwd=REPO, env=env, check=True, timeout=600)
        summaries.append(_summary(run))
    one, two = summaries
    assert two["world_size"] == 2 and one["clients_per_round"] == 5
    for key in (
        "global_weights_sha256",
        "train_loss_per_round",
        "eval_loss_per_round",
        "eval_loss_before",
        "uplink_bytes_per_client_round",
        "downlink_bytes_per_round",
        "pro_probabilities_sorted",
        "local_budget",
    ):
        assert one.get(key) == two.get(key), key


def test_wandb_logs_offline_without_an_account(tiny_model_dir, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "")
    run = tmp_path / "run"
    main(_args(tiny_model_dir, data_root, run, rounds=1) + ["--wandb", "true"])
    offline_runs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline_runs) == 1 and offline_runs[0].stat().st_size > 0


def test_run_directory_rebuilds_the_trained_global_weights(tiny_model_dir, data_root, tmp_path):
    from kit.rebuild import load_run_model
    from kit.reporting import weights_digest

    run = tmp_path / "run"
    main(_args(tiny_model_dir, data_root, run, rounds=2))
    model, tokenizer = load_run_model(run)
    assert weights_digest(model) == _summary(run)["global_weights_sha256"]
    assert tokenizer.pad_token is not None
    with pytest.raises(FileNotFoundError, match="fedkseed run directory"):
        load_run_model(tmp_path)


@pytest.mark.parametrize("extra", [[], ["--method", "feedsign"]], ids=["fedkseed-pro", "feedsign"])
def test_an_earlier_round_of_a_seed_history_run_is_rebuilt_by_replay(
    extra, tiny_model_dir, data_root, tmp_path
):
    from kit.errors import UsageError
    from kit.models import load_model
    from kit.rebuild import load_run_model
    from kit.reporting import weights_digest

    two, one = tmp_path / "two", tmp_path / "one"
    main(_args(tiny_model_dir, data_root, two, rounds=2) + extra)
    main(_args(tiny_model_dir, data_root, one, rounds=1) + extra)
    assert _summary(one)["global_weights_sha256"] != _summary(two)["global_weights_sha256"]
    # round 1 of the 2-round run is the 1-round run's final model, bit for bit
    assert weights_digest(load_run_model(two, at_round=1)[0]) == _summary(one)["global_weights_sha256"]
    assert weights_digest(load_run_model(two, at_round=2)[0]) == _summary(two)["global_weights_sha256"]
    # round 0: the base model itself
    base = load_model(str(tiny_model_dir))
    assert weights_digest(load_run_model(two, at_round=0)[0]) == weights_digest(base)
    for bad in (-1, 3):
        with pytest.raises(UsageError, match="holds rounds 0 to 2"):
            load_run_model(two, at_round=bad)


def test_a_method_without_a_round_history_refuses_an_earlier_round(tiny_model_dir, data_root, tmp_path):
    from kit.errors import UsageError
    from kit.rebuild import load_run_model

    run = tmp_path / "fedit"
    main(
        _args(tiny_model_dir, data_root, run, rounds=2) + ["--method", "fedit", "--fed.rouge_at_end", "false"]
    )
    with pytest.raises(UsageError, match="fedit keeps its last global state.*--trainer.max_epochs 1"):
        load_run_model(run, at_round=1)
    load_run_model(run, at_round=2)  # its last round is its checkpoint's


def test_fedkseed_eval_scores_a_run_directory(tiny_model_dir, data_root, tmp_path, capsys):
    run = tmp_path / "run"
    main(_args(tiny_model_dir, data_root, run, rounds=1))
    capsys.readouterr()
    main(["eval", "--run", str(run), "--suite", "ni", "--limit", "3", "--max-new-tokens", "4",
          "--data-root", str(data_root), "--out", str(tmp_path / "eval"), "--no-progress"])  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["ni"]["n"] == 3 and (tmp_path / "eval" / "generations_ni.jsonl").is_file()
