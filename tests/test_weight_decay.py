"""FedKSeed with weight decay > 0: every way of rebuilding the global model gives the server's weights.

The server's global update decays matrices by `round_decay(lr, wd, tau)` (kit/federation/sync.py);
a Flower node's replay, a resumed run and a materialized seed file must apply that same factor, not
the raw weight decay, or their weights leave the server's.
"""

from __future__ import annotations

import json

from kit.cli import main
from kit.deploy.client_app import app as client_app
from kit.deploy.local_grid import LocalGrid
from kit.federation.seedfile import decode
from kit.federation.sync import round_decay
from kit.identity import weights_digest

from .conftest import fed_args
from .test_deploy_flower import _replica_digest, _run_config, _strategy
from .test_golden_run import PRO

WD = ["--model.weight_decay", "0.5"]  # lr 1e-3, tau 3: each round's update removes 0.15% of the matrices


def _fit(model_dir, data_root, run, rounds: int, *extra: str) -> dict:
    main([*fed_args(model_dir, data_root, run, rounds=rounds), "--fed.rouge_at_end", "false", *WD, *extra])
    return json.loads((run / "summary.json").read_text())


def test_server_replica_resume_and_materialize_agree_with_weight_decay(tiny_model_dir, data_root, tmp_path):
    from transformers import AutoModelForCausalLM

    full = _fit(tiny_model_dir, data_root, tmp_path / "full", 2)
    digest = full["global_weights_sha256"]
    assert digest != PRO["global_weights_sha256"]  # weight decay changed the weights

    # resumed after round 1
    part = tmp_path / "part"
    _fit(tiny_model_dir, data_root, part, 1)
    resumed = _fit(tiny_model_dir, data_root, part, 2, "--ckpt_path", str(part / "checkpoints" / "last.ckpt"))
    assert resumed["global_weights_sha256"] == digest

    # exported as a seed file (tau recorded), materialized
    seeds = tmp_path / "run.seeds"
    main(["export", "--run", str(tmp_path / "full"), "--out", str(seeds)])
    sf = decode(seeds.read_bytes())
    assert sf.local_steps == 3 and sf.round_decay() == round_decay(1e-3, 0.5, 3)
    main(["materialize", str(seeds), "--out", str(tmp_path / "model")])
    assert weights_digest(AutoModelForCausalLM.from_pretrained(tmp_path / "model")) == digest

    # on Flower: the server's model, every node's replica, and a restarted node that replays both rounds
    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    rc["overrides"] = json.dumps({**json.loads(rc["overrides"]), "model.weight_decay": 0.5})
    grid = LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes")
    strategy = _strategy(rc, tmp_path / "flower")
    s = strategy.run(grid)
    assert s["global_weights_sha256"] == digest and s["replica_digest_mismatches"] == 0
    assert s["train_loss_per_round"] == full["train_loss_per_round"]
    node = next(iter(grid.contexts))
    grid.down.add(node)
    partition = grid.contexts[node].node_config["partition-id"]
    (tmp_path / "nodes" / f"node-{partition}").rename(tmp_path / "lost")  # its disk is gone too
    restarted = grid.add_node(partition)
    strategy.discover(grid)
    assert strategy.synced[restarted] == 0
    assert _replica_digest(grid, strategy, restarted) == digest
