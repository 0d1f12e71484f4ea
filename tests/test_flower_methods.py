"""Every method on Flower: a `LocalGrid` run equals the Lightning run of the same tiny recipe and seed.

Tensor-payload methods' nodes catch up by downloading the global state; FedKSeed's by replay. Either
way each node trains from the server's exact weights, so the final weights digest, the per-round
train losses and the eval losses are the Lightning run's, bit for bit.
"""

from __future__ import annotations

import json

import pytest

from kit.cli import main
from kit.deploy.client_app import app as client_app
from kit.deploy.local_grid import LocalGrid
from kit.methods import METHODS

from .conftest import fed_args, method_cli, method_overrides
from .test_deploy_flower import _run_config, _strategy


@pytest.mark.parametrize("name", METHODS)
def test_every_method_on_flower_equals_its_lightning_run(name, tiny_model_dir, data_root, tmp_path):
    hp, cli = method_overrides(name), method_cli(name)
    run = tmp_path / "lightning"
    main([*fed_args(tiny_model_dir, data_root, run, rounds=2), "--fed.rouge_at_end", "false", *cli])
    lit = json.loads((run / "summary.json").read_text())

    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    rc["overrides"] = json.dumps({**json.loads(rc["overrides"]), **hp})
    grid = LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes")
    s = _strategy(rc, tmp_path / "flower").run(grid)
    assert s["method"] == lit["method"] == name
    assert s["global_weights_sha256"] == lit["global_weights_sha256"]
    assert s["train_loss_per_round"] == lit["train_loss_per_round"]
    assert s["eval_loss_per_round"] == lit["eval_loss_per_round"]
    assert s["replica_digest_mismatches"] == 0
