"""Faults in a Lightning simulation through the real CLI: dropout and stragglers past the deadline
are recorded per round in metrics.csv and summary.json, and a round with nobody left changes nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from kit.cli import main
from kit.federation.faults import FaultModel
from kit.federation.server import sample_clients

from .conftest import REPO, fed_args

FAULTS = ["--fed.dropout", "0.3", "--fed.straggler_prob", "0.3", "--fed.straggler_delay_s", "10"]
FAULTS += ["--fed.deadline_s", "5", "--fed.fraction", "0.1", "--fed.rouge_at_end", "false"]


def test_a_dropout_run_records_the_missing_clients_of_every_round(tiny_model_dir, data_root, tmp_path):
    run = tmp_path / "run"
    main(fed_args(tiny_model_dir, data_root, run, rounds=3) + FAULTS)
    s = json.loads((run / "summary.json").read_text())
    assert s["finished"] and s["rounds"] == 3
    model = FaultModel(dropout=0.3, straggler_prob=0.3, straggler_delay_s=10.0, deadline_s=5.0)
    assert s["faults"] == {**vars(model), "aggregation": "mean", "trim_fraction": 0.1, "scalar_bound": None}
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    per_round = {int(r["round"]): r for r in rows if r.get("fed/sampled")}
    assert sorted(per_round) == [1, 2, 3]
    missing_total = 0
    for rnd, record in enumerate(s["missing_clients_per_round"], start=1):
        expected = model.round(42, rnd, sample_clients(42, rnd, s["num_clients"], 0.1))  # --fed.seed 42
        assert record == {
            "round": rnd,
            "dropped": expected.dropped,
            "late": expected.late,
            "rejected": {},
            "aggregated": len(expected.arrived),
        }
        row = per_round[rnd]
        assert float(row["fed/dropped"]) == len(expected.dropped)
        assert float(row["fed/late"]) == len(expected.late)
        assert float(row["fed/aggregated"]) == len(expected.arrived)
        assert float(row["fed/rejected"]) == 0.0
        assert row["fed/missing_clients"].split() == [str(c) for c in expected.missing]
        missing_total += len(expected.missing)
    assert missing_total > 0 and s["clients_per_round"] == 5  # the seeds above do drop someone
    assert s["rejected_uplinks"]["duplicate"] == 0 and s["rounds_without_update"] == 0


def test_a_round_with_every_client_missing_makes_no_update(tiny_model_dir, data_root, tmp_path):
    run = tmp_path / "run"
    args = fed_args(tiny_model_dir, data_root, run, rounds=1) + ["--fed.dropout", "1.0"]
    main(args + ["--fed.rouge_at_end", "false"])
    s = json.loads((run / "summary.json").read_text())
    assert s["finished"] and s["rounds_without_update"] == 1
    assert s["train_loss_per_round"] == [None] and s["divergence"] == []  # no loss is no collapse
    assert s["eval_loss_per_round"] == [s["eval_loss_before"]]  # the global model did not move
    assert s["uplink_bytes_per_client_round"]["max"] == 0
    from kit.rebuild import load_run_model  # replays the round's G = 0 and checks the weights digest

    load_run_model(run)


def test_a_resumed_faulty_run_repeats_the_uninterrupted_one(tiny_model_dir, data_root, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    main(fed_args(tiny_model_dir, data_root, full, rounds=2) + FAULTS)
    main(fed_args(tiny_model_dir, data_root, part, rounds=1) + FAULTS)
    ckpt = ["--ckpt_path", str(part / "checkpoints" / "last.ckpt")]
    main(fed_args(tiny_model_dir, data_root, part, rounds=2) + FAULTS + ckpt)
    a, b = (json.loads((run / "summary.json").read_text()) for run in (full, part))
    for key in (
        "global_weights_sha256",
        "train_loss_per_round",
        "missing_clients_per_round",
        "rejected_uplinks",
    ):
        assert a[key] == b[key], key


@pytest.mark.slow
def test_two_processes_match_one_with_faults(tiny_model_dir, data_root, tmp_path):
    env = {**os.environ, "FEDKSEED_DATA_ROOT": str(data_root)}
    env.pop("FEDKSEED_RUN_DIR", None)
    summaries = []
    for devices in (1, 2):
        run = tmp_path / f"devices{devices}"
        args = fed_args(tiny_model_dir, data_root, run, rounds=2) + FAULTS
        args += [
            "--trainer.devices",
            str(devices),
            "--trainer.strategy",
            "fed_ddp" if devices > 1 else "auto",
        ]
        subprocess.run([sys.executable, "-m", "kit", *args], cwd=REPO, env=env, check=True, timeout=600)
        summaries.append(json.loads((run / "summary.json").read_text()))
    one, two = summaries
    assert two["world_size"] == 2
    for key in (
        "global_weights_sha256",
        "train_loss_per_round",
        "eval_loss_per_round",
        "missing_clients_per_round",
    ):
        assert one[key] == two[key], key
