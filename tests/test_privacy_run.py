"""DP in whole runs: Lightning and Flower (LocalGrid) give the same bits with DP on, epsilon is
recorded per round in metrics.csv and summary.json, and a DP run resumes bit-identically after kill -9."""

from __future__ import annotations

import json
import math

import pytest

from kit.checkpoint import LAST
from kit.cli import main
from kit.deploy.client_app import app as client_app
from kit.deploy.local_grid import LocalGrid
from kit.privacy.accountant import central_epsilon

from .conftest import fed_args, method_cli, method_overrides
from .test_deploy_flower import _run_config, _strategy
from .test_flower_methods import _rows
from .test_resume import _args as _resume_args
from .test_resume import _rounds_done, kill_9_inside_round_3

DP = {"fed.dp_clip": 1.0, "fed.dp_noise_multiplier": 0.5}


def _dp_cli(mode: str) -> list[str]:
    return ["--fed.dp_mode", mode, *(x for k, v in DP.items() for x in (f"--{k}", str(v)))]


@pytest.mark.parametrize(
    ("name", "mode"), [("fedkseed", "central"), ("fedit", "central"), ("fedkseed-pro", "local")]
)
def test_a_dp_run_on_flower_equals_its_lightning_run(name, mode, tiny_model_dir, data_root, tmp_path):
    run = tmp_path / "lightning"
    args = fed_args(tiny_model_dir, data_root, run, rounds=2)
    main([*args, "--fed.rouge_at_end", "false", *method_cli(name), *_dp_cli(mode)])
    lit = json.loads((run / "summary.json").read_text())

    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    rc["overrides"] = json.dumps(
        {**json.loads(rc["overrides"]), **method_overrides(name), **DP, "fed.dp_mode": mode}
    )
    grid = LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes")
    s = _strategy(rc, tmp_path / "flower").run(grid)
    assert s["global_weights_sha256"] == lit["global_weights_sha256"]
    assert s["train_loss_per_round"] == lit["train_loss_per_round"]
    assert s["privacy"] == lit["privacy"] and s["privacy"]["mode"] == mode
    eps = s["privacy"]["epsilon_per_round"]
    assert (
        len(eps) == 2 and 0 < eps[0] <= eps[1] == s["privacy"]["epsilon"]
    )  # local: equal if no one came twice
    if mode == "central":
        n, m = s["num_clients"], s["clients_per_round"]
        assert eps[0] < eps[1] == central_epsilon(0.5, n, m, 2, 1e-5)
    ours, theirs = _rows(tmp_path / "flower"), _rows(run)
    assert ours == theirs
    assert [float(r["dp/epsilon"]) for r in ours[1:]] == pytest.approx(eps, rel=1e-12)


def test_dp_changes_the_update_and_clip_only_has_infinite_epsilon(tiny_model_dir, data_root, tmp_path):
    digests = {}
    for label, extra in [
        ("plain", []),
        ("clip", ["--fed.dp_mode", "central", "--fed.dp_clip", "1e-3", "--fed.dp_noise_multiplier", "0"]),
        ("noise", _dp_cli("central")),
    ]:
        run = tmp_path / label
        main([*fed_args(tiny_model_dir, data_root, run, rounds=1), "--fed.rouge_at_end", "false",
              "--method", "fedkseed", *extra])  # fmt: skip
        digests[label] = json.loads((run / "summary.json").read_text())
    assert len({d["global_weights_sha256"] for d in digests.values()}) == 3
    assert digests["plain"]["privacy"] is None
    assert digests["clip"]["privacy"]["epsilon"] is None  # infinite: clipping alone protects nothing
    assert math.isfinite(digests["noise"]["privacy"]["epsilon"])
    assert (
        digests["noise"]["uplink_bytes_per_client_round"] == digests["plain"]["uplink_bytes_per_client_round"]
    )


def test_a_dp_run_killed_mid_round_resumes_bit_identically(tiny_model_dir, data_root, tmp_path):
    killed, full = tmp_path / "killed", tmp_path / "full"
    ckpt = killed / "checkpoints" / LAST

    def args(run):
        return [*_resume_args(tiny_model_dir, data_root, run), "--method", "fedkseed", *_dp_cli("central")]

    kill_9_inside_round_3(args(killed), ckpt, tmp_path / "killed.log")
    assert _rounds_done(ckpt) == 2
    main([*args(killed), "--ckpt_path", str(ckpt)])
    main(args(full))
    a, b = (json.loads((run / "summary.json").read_text()) for run in (full, killed))
    assert b["rounds"] == 3 and b["finished"]
    for key in ("global_weights_sha256", "train_loss_per_round", "eval_loss_per_round", "privacy"):
        assert a[key] == b[key], key
    rows = _rows(killed)
    assert [r["round"] for r in rows] == ["0", "1", "2", "3"] and rows == _rows(full)
    assert rows[3]["dp/epsilon"] and float(rows[3]["dp/epsilon"]) == a["privacy"]["epsilon"]
