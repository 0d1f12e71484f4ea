"""FedKSeed on Flower, in one process (kit.deploy.local_grid): the real strategy and ClientApp.

The same recipe and seed as the Lightning golden run (tests/test_golden_run.py) must end with the
same weights digest and losses; nodes that miss rounds catch up bit for bit; a restarted server
continues from its checkpoint to the same final digest.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml

from kit.deploy.client_app import app as client_app
from kit.deploy.local_grid import LocalGrid
from kit.deploy.recipe import load_recipe, recipe_from_run_config
from kit.deploy.strategy import FedKSeedStrategy
from kit.federation.catchup import MERGED, REPLAY, WEIGHTS, plan_catchup

from .conftest import fed_args
from .test_golden_run import GOLDEN


def _run_config(model_dir, data_root, tmp_path, rounds: int = 2) -> dict:
    """The golden run's CLI arguments as a Flower run config (dotted overrides)."""
    args = fed_args(model_dir, data_root, tmp_path / "unused", rounds=rounds)[1:]
    overrides = {}
    for key, text in zip(args[::2], args[1::2], strict=True):
        value = yaml.safe_load(text)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; the CLI reads a float
            with contextlib.suppress(ValueError):
                value = float(value)
        overrides[key[2:]] = value
    for key in ("seed_everything", "run_dir", "trainer.accelerator"):
        overrides.pop(key)
    return {"overrides": json.dumps(overrides)}


def _strategy(run_config, run_dir, **kw) -> FedKSeedStrategy:
    return FedKSeedStrategy(recipe_from_run_config(run_config), run_dir, **kw)


def _replica_digest(grid: LocalGrid, strategy: FedKSeedStrategy, node: int) -> str:
    """Ask `node` to sync to the server's round (an evaluate message) and report its replica digest."""
    from flwr.app import Message, MessageType

    content, _ = strategy._sync_records(node, strategy.rounds_done)
    msg = Message(content, dst_node_id=node, message_type=MessageType.EVALUATE, group_id="check")
    (reply,) = grid.send_and_receive([msg])
    return reply.content["eval"]["replica-digest"]


def test_flower_run_equals_the_lightning_run(tiny_model_dir, data_root, tmp_path):
    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    grid = LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes")
    s = _strategy(rc, tmp_path / "run").run(grid)
    golden = GOLDEN["fedkseed-pro"]
    assert s["global_weights_sha256"] == golden["global_weights_sha256"]
    assert s["train_loss_per_round"] == golden["train_loss_per_round"]
    assert s["eval_loss_per_round"] == golden["eval_loss_per_round"]
    assert s["replica_digest_mismatches"] == 0 and all(r["eval_replica_digest_ok"] for r in s["per_round"])
    # bytes on the wire: the kit's payload and Flower's whole message, both far under the paper's 18 KB
    assert 0 < s["uplink_payload_bytes_max"] < s["uplink_flower_bytes_max"] < s["paper_claim_bytes"]
    assert s["downlink_flower_bytes_max"] < s["paper_claim_bytes"]


def test_weights_download_when_cheaper_is_bit_identical(tiny_model_dir, data_root, tmp_path):
    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    grid = LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes")
    s = _strategy(rc, tmp_path / "run", bandwidth=1e15).run(grid)
    assert "weights" in s["per_round"][1]["syncs"]
    assert s["global_weights_sha256"] == GOLDEN["fedkseed-pro"]["global_weights_sha256"]
    assert s["replica_digest_mismatches"] == 0


def test_node_down_mid_run_round_completes_then_it_catches_up(tiny_model_dir, data_root, tmp_path):
    rc = _run_config(tiny_model_dir, data_root, tmp_path, rounds=3)
    grid = LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes")
    strategy = _strategy(rc, tmp_path / "run")
    strategy.run(grid, stop_after=1)
    round2 = sorted(strategy.owner(c) for c in [6, 44])  # round 2's clients (seeded sampling)
    dead = round2[-1]
    grid.down.add(dead)  # killed: it answers nothing
    strategy.run(grid, stop_after=2)
    rec = strategy.history[1]
    assert rec["missing"] and rec["trained"] and len(rec["trained"]) + len(rec["missing"]) == 2
    restarted = grid.add_node(grid.contexts[dead].node_config["partition-id"])  # same state dir, new id
    s = strategy.run(grid)
    assert s["rounds"] == 3 and s["replica_digest_mismatches"] == 0
    assert strategy.owner(rec["missing"][0]) == restarted
    assert _replica_digest(grid, strategy, restarted) == s["global_weights_sha256"]


def test_restarted_server_continues_from_its_checkpoint(tiny_model_dir, data_root, tmp_path):
    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    first = _strategy(rc, tmp_path / "run")
    first.run(LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes"), stop_after=1)
    assert (tmp_path / "run" / "checkpoints" / "server.pt").is_file()
    again = _strategy(rc, tmp_path / "run")  # a new server process: state from the checkpoint only
    assert again.rounds_done == 1
    s = again.run(LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes"))
    assert s["global_weights_sha256"] == GOLDEN["fedkseed-pro"]["global_weights_sha256"]
    assert s["train_loss_per_round"] == GOLDEN["fedkseed-pro"]["train_loss_per_round"]


def test_catchup_plan_picks_the_cheapest_allowed_way():
    n = 1_000_000  # replay pass: n / 5e8 = 2 ms; download: 4n / 12.5e6 = 320 ms
    assert plan_catchup([], 0, n).kind == "none"
    assert plan_catchup([10, 20], 25, n).kind == REPLAY  # 30 passes = 60 ms < 320 ms
    assert plan_catchup([100, 100], 150, n).kind == WEIGHTS  # 200 passes = 400 ms > 320 ms
    assert plan_catchup([100, 100], 150, n, merged_after=2).kind == MERGED  # 150 passes = 300 ms
    assert plan_catchup([100, 100], 150, n, merged_after=3).kind == WEIGHTS  # merged not allowed yet
    assert plan_catchup([80], 80, n).passes == 80 and plan_catchup([80], 80, n).seconds == pytest.approx(0.16)


def test_recipe_refuses_methods_flower_does_not_run(tmp_path):
    with pytest.raises(ValueError, match="--method fedit is not supported on Flower"):
        load_recipe([], {"method": "fedit"})
    with pytest.raises(FileNotFoundError, match="recipe .* not found"):
        load_recipe([str(tmp_path / "missing.yaml")])


@pytest.mark.slow
def test_superlink_and_three_supernodes_on_loopback_equal_the_lightning_run(
    tiny_model_dir, data_root, tmp_path
):
    """Real processes: `flower-superlink` + 3 `flower-supernode` on 127.0.0.1, the run by `flwr run`."""
    from kit.deploy.local import LocalDeployment, process_tree

    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    dep = LocalDeployment(tmp_path / "dep", num_nodes=3)
    try:
        dep.start()
        pids = [pid for p in [dep.superlink, *dep.nodes.values()] for pid in process_tree(p.pid)]
        dep.submit({**rc, "run-dir": str(tmp_path / "dep"), "round-timeout": 300.0})
        s = dep.wait_summary(rounds=2, timeout=900)
    finally:
        dep.stop()
    assert s["global_weights_sha256"] == GOLDEN["fedkseed-pro"]["global_weights_sha256"]
    assert s["train_loss_per_round"] == GOLDEN["fedkseed-pro"]["train_loss_per_round"]
    assert s["replica_digest_mismatches"] == 0
    assert all(not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid) for pid in pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"
