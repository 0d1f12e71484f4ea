"""FedKSeed on Flower: in one process (kit.deploy.local_grid) and with real processes on loopback.

The same recipe and seed as the Lightning golden run (tests/test_golden_run.py) must end with the
same weights digest and losses; nodes that miss rounds catch up bit for bit; a restarted server
continues from its checkpoint to the same final digest; a SuperNode killed mid-round leaves the
round to the others within the deadline, and catches up when restarted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest
import yaml

from kit.cli import main
from kit.deploy.client_app import app as client_app
from kit.deploy.local_grid import LocalGrid
from kit.deploy.recipe import load_recipe, recipe_from_run_config
from kit.deploy.strategy import FedKSeedStrategy
from kit.errors import UsageError
from kit.federation.catchup import MERGED, REPLAY, WEIGHTS, plan_catchup

from .conftest import REPO, fed_args, method_cli, method_overrides
from .test_golden_run import golden


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


class _ReversedGrid(LocalGrid):
    """Replies pulled in the reverse of the order they were sent (a SuperLink keeps no order)."""

    def pull_messages(self, message_ids):
        return list(reversed(list(super().pull_messages(message_ids))))


def test_flower_run_equals_the_lightning_run(tiny_model_dir, data_root, tmp_path):
    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    grid = _ReversedGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes")
    s = _strategy(rc, tmp_path / "run").run(grid)
    for r in s["per_round"]:  # the per-uplink lists follow uplink_clients, whatever the arrival order
        assert r["uplink_clients"] == sorted(r["uplink_clients"]) == r["trained"]
        assert [s["nodes"][str(n)] for n in r["nodes"]] == [c % 3 for c in r["uplink_clients"]]
    expected = golden("fedkseed-pro")
    assert s["global_weights_sha256"] == expected["global_weights_sha256"]
    assert s["train_loss_per_round"] == expected["train_loss_per_round"]
    assert s["eval_loss_per_round"] == expected["eval_loss_per_round"]
    assert s["replica_digest_mismatches"] == 0 and all(r["eval_replica_digest_ok"] for r in s["per_round"])
    # bytes on the wire: the kit's payload and Flower's whole message, both far under the paper's 18 KB
    assert 0 < s["uplink_payload_bytes_max"] < s["uplink_flower_bytes_max"] < s["paper_claim_bytes"]
    assert s["downlink_flower_bytes_max"] < s["paper_claim_bytes"]


def test_weights_download_when_cheaper_is_bit_identical(tiny_model_dir, data_root, tmp_path):
    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    grid = LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes")
    s = _strategy(rc, tmp_path / "run", bandwidth=1e15).run(grid)
    assert "weights" in s["per_round"][1]["syncs"]
    assert s["global_weights_sha256"] == golden("fedkseed-pro")["global_weights_sha256"]
    assert s["replica_digest_mismatches"] == 0


def test_node_down_mid_run_round_completes_then_it_catches_up(tiny_model_dir, data_root, tmp_path):
    rc = _run_config(tiny_model_dir, data_root, tmp_path, rounds=3)
    grid = LocalGrid(client_app, rc, num_nodes=3, state_root=tmp_path / "nodes")
    strategy = _strategy(rc, tmp_path / "run", round_timeout=3.0)
    strategy.run(grid, stop_after=1)
    round2 = sorted(strategy.owner(c) for c in [6, 44])  # round 2's clients (seeded sampling)
    dead = round2[-1]
    grid.silent.add(dead)  # killed, its heartbeat not yet expired: it looks online, answers nothing
    strategy.run(grid, stop_after=2)
    rec = strategy.history[1]
    assert rec["missing"] and rec["trained"] and len(rec["trained"]) + len(rec["missing"]) == 2
    assert rec["deadline_missed"] == rec["missing"] and rec["train_wait_s"] >= 3.0  # waited it out
    grid.silent.discard(dead)
    grid.down.add(dead)  # its heartbeat expired: the SuperLink answers for it, no wait
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
    assert s["global_weights_sha256"] == golden("fedkseed-pro")["global_weights_sha256"]
    assert s["train_loss_per_round"] == golden("fedkseed-pro")["train_loss_per_round"]
    ckpt = tmp_path / "run" / "checkpoints" / "server.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-50])  # e.g. a disk filled up while copying the run
    with pytest.raises(UsageError, match=r"server checkpoint .*server\.pt is truncated or corrupt.*move"):
        _strategy(rc, tmp_path / "run")


def test_catchup_plan_picks_the_cheapest_allowed_way():
    n = 1_000_000  # replay pass: n / 5e8 = 2 ms; download: 4n / 12.5e6 = 320 ms
    assert plan_catchup([], 0, n).kind == "none"
    assert plan_catchup([10, 20], 25, n).kind == REPLAY  # 30 passes = 60 ms < 320 ms
    assert plan_catchup([100, 100], 150, n).kind == WEIGHTS  # 200 passes = 400 ms > 320 ms
    assert plan_catchup([100, 100], 150, n, merged_after=2).kind == MERGED  # 150 passes = 300 ms
    assert plan_catchup([100, 100], 150, n, merged_after=3).kind == WEIGHTS  # merged not allowed yet
    assert plan_catchup([80], 80, n).passes == 80 and plan_catchup([80], 80, n).seconds == pytest.approx(0.16)


def test_recipe_refuses_unknown_methods_and_missing_files(tmp_path):
    assert load_recipe([], {"method": "fedit"}).method == "fedit"  # every method runs on Flower
    with pytest.raises(ValueError, match="unknown method 'fedx'.*one of fedkseed, fedkseed-pro"):
        load_recipe([], {"method": "fedx"})
    with pytest.raises(FileNotFoundError, match="recipe .* not found"):
        load_recipe([str(tmp_path / "missing.yaml")])


def test_messages_for_one_node_wait_for_each_other(tiny_model_dir, data_root, tmp_path):
    """A node's replica serves one message at a time: Ray's simulation may send two at once (two actors)."""
    import threading

    from kit.deploy.node_ops import handle, node_replica, replica_lock

    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    node = {"partition-id": 0, "num-partitions": 3, "state-dir": str(tmp_path / "node"), "worker": False}
    handle("query", rc, node, {})  # loads the model and the data: the evaluate below takes well under 1 s
    request = {"sync": {"target": 0, "first": 1, "downlinks": [], "sync": REPLAY}}
    events: list[str] = []
    worker = threading.Thread(target=lambda: events.append(str(handle("evaluate", rc, node, request))))
    with replica_lock(node_replica(rc, node).dir):  # another message is at work on this node
        worker.start()
        worker.join(timeout=3)
        events.append("released")
    worker.join(timeout=60)
    assert events[0] == "released" and "replica-digest" in events[1]


@pytest.mark.slow
def test_flower_simulation_equals_the_lightning_run(tiny_model_dir, data_root, tmp_path):
    """Flower's own simulation runtime (Ray actors as SuperNodes): the golden digest and losses."""
    from kit.deploy.simulate import ray_missing, simulate

    if why := ray_missing():
        pytest.skip(why)
    rc = {**_run_config(tiny_model_dir, data_root, tmp_path), "run-dir": str(tmp_path / "sim")}
    s = simulate(rc, num_nodes=3)
    expected = golden("fedkseed-pro")
    assert s["global_weights_sha256"] == expected["global_weights_sha256"]
    assert s["train_loss_per_round"] == expected["train_loss_per_round"]
    assert s["eval_loss_per_round"] == expected["eval_loss_per_round"]
    assert s["replica_digest_mismatches"] == 0 and len(s["nodes"]) == 3


def test_node_worker_serves_messages_and_dies_with_its_supernode(tiny_model_dir, data_root, tmp_path):
    """The ClientApp's work runs in one long-lived worker per node, which exits with the SuperNode."""
    import subprocess
    import sys

    from kit.deploy.node_link import call
    from kit.deploy.node_ops import handle
    from kit.deploy.node_worker import alive

    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    node = {"partition-id": 1, "num-partitions": 3, "state-dir": str(tmp_path / "node")}
    supernode = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # stands in
    pid = None
    try:
        first = call("query", rc, node, {}, watch_pid=supernode.pid)
        pid = int((tmp_path / "node" / "worker.pid").read_text())
        assert call("query", rc, node, {}, watch_pid=supernode.pid) == first  # the same worker answers
        assert int((tmp_path / "node" / "worker.pid").read_text()) == pid and alive(pid)
        assert first == handle("query", rc, {**node, "worker": False}, {})  # as in-process
        with pytest.raises(RuntimeError, match="node worker: ValueError: unknown node operation"):
            call("fit", rc, node, {}, watch_pid=supernode.pid)
        supernode.kill()
        supernode.wait(timeout=10)
        end = time.monotonic() + 10
        while alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
        assert not alive(pid), "the worker outlived the process it watches"
    finally:
        supernode.kill()
        supernode.wait(timeout=10)
        if pid and alive(pid):  # only on failure: never leave it running
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
# fedit's weights catch-up also runs by default on LocalGrid (tests/test_flower_methods.py); opt in: -m long
@pytest.mark.parametrize("name", ["fedkseed-pro", pytest.param("fedit", marks=pytest.mark.long)])
def test_real_processes_server_restart_node_kill_and_catch_up(name, tiny_model_dir, data_root, tmp_path):
    """One deployment on 127.0.0.1 (`flower-superlink` + 3 `flower-supernode`), four `flwr run`s:

    1) the ServerApp killed (-9) after round 1 and the run resubmitted: it resumes from its
       checkpoint and ends round 2 with the Lightning golden run's digest and losses;
    2) round 3: the SuperNode of a round-3 client is killed (-9) once it has received its train
       message; the round completes with the other client (by the deadline, or earlier when the
       SuperLink declares the node gone); restarted on the same state dir, the node catches up (by
       replay for FedKSeed, by downloading the global state for FedIT) and trains its round-4
       client, its replica's digest equal to the server's.
    The deadline alone ending a round (a node that looks alive) is pinned in one process above.
    """
    from kit.deploy.local import LocalDeployment, cmdline, process_tree
    from kit.deploy.node_worker import alive
    from kit.federation.server import sample_clients

    run_dir, deadline = tmp_path / "dep", 120.0  # > the <= 60 s a killed node looks alive
    run = {"run-dir": str(run_dir), "round-timeout": 600.0}
    dep, seen = LocalDeployment(run_dir, num_nodes=3), set()

    def track() -> None:  # every process the deployment runs now, to check they all end
        for proc in [dep.superlink, *dep.nodes.values()]:
            seen.update(process_tree(proc.pid))
        seen.update(p for i in range(3) if (p := dep.worker_pid(i)))

    def submit(rounds: int, **extra) -> None:
        rc = _run_config(tiny_model_dir, data_root, tmp_path, rounds=rounds)
        if name != "fedkseed-pro":  # the golden run's recipe; FedIT's method recipe
            rc["overrides"] = json.dumps({**json.loads(rc["overrides"]), **method_overrides(name)})
        dep.submit({**rc, **run, **extra})

    if name == "fedkseed-pro":
        expected = golden(name)
    else:  # the Lightning run of the same recipe (tests/test_flower_methods.py: equal in one process)
        lit = tmp_path / "lightning"
        args = fed_args(tiny_model_dir, data_root, lit, rounds=2) + ["--fed.rouge_at_end", "false"]
        main([*args, *method_cli(name)])
        expected = json.loads((lit / "summary.json").read_text())

    try:
        dep.start()
        # 1) server killed after round 1, restarted from its checkpoint
        submit(2)
        dep.wait_summary(rounds=1, timeout=900)
        track()
        dep.kill_serverapp()
        submit(2)
        s2 = dep.wait_summary(rounds=2, timeout=900)
        assert s2["resumed_at"] == [1]
        assert s2["global_weights_sha256"] == expected["global_weights_sha256"]
        assert s2["train_loss_per_round"] == expected["train_loss_per_round"]
        assert s2["replica_digest_mismatches"] == 0

        # 2) a SuperNode killed mid-round 3: the node of a round-3 client that has a round-4 client too
        fed = recipe_from_run_config(_run_config(tiny_model_dir, data_root, tmp_path)).fed
        r3, r4 = (sample_clients(fed["seed"], r, s2["num_clients"], fed["fraction"]) for r in (3, 4))
        k = next(c % 3 for c in r3 if c % 3 in {d % 3 for d in r4})
        track()
        submit(3, **{"round-timeout": deadline})
        at = dep.wait_log(f"supernode-{k}", "ROUND 3]", timeout=900)
        dep.wait_log(f"supernode-{k}", "Receiving: train", timeout=60, after=at)
        worker = dep.worker_pid(k)
        dep.kill_node(k)  # kill -9 its whole process tree, while its ClientApp starts
        end = time.monotonic() + 10
        while worker and alive(worker) and time.monotonic() < end:
            time.sleep(0.1)
        assert worker and not alive(worker), "the killed SuperNode's worker outlived it"
        log_end = (dep.logs / f"supernode-{k}.log").stat().st_size
        dep.start_node(k)  # restarted on the same state dir
        s3 = dep.wait_summary(rounds=3, timeout=900)
        dep.wait_log(f"supernode-{k}", "SuperNode ID", timeout=600, after=log_end)  # registered
        submit(4)
        s = dep.wait_summary(rounds=4, timeout=900)
        track()
    finally:
        dep.stop()
    third, fourth = s["per_round"][2], s["per_round"][3]
    gone = [c for c in r3 if c % 3 == k]
    assert third["missing"] == gone and gone in (third["deadline_missed"], third["failed"])
    assert third["trained"] == [c for c in r3 if c % 3 != k] and third["train_wait_s"] < deadline + 10
    back = [c for c in r4 if c % 3 == k]
    assert set(back) <= set(fourth["trained"]) and s["finished"] and s["resumed_at"] == [1, 2, 3]
    i = fourth["uplink_clients"].index(back[0])  # nodes, syncs: one entry per uplink, in this order
    # its replica (round 2) replayed round 3's downlink, or (FedIT) downloaded round 3's global state
    assert fourth["syncs"][i] == ("replay" if name == "fedkseed-pro" else "weights")
    old = [int(n) for n, part in s3["nodes"].items() if part == k]  # the id the killed node had
    assert s["nodes"][str(fourth["nodes"][i])] == k and fourth["nodes"][i] not in old  # restarted node
    assert s["replica_digest_mismatches"] == 0  # every replica that trained equalled the server's model
    ours = ("flower-", "flwr-", "kit.deploy.node_worker")  # a pid seen may be reused now: check it
    end = time.monotonic() + 20  # a node worker notices its SuperExec is gone within about a second
    while (left := [p for p in seen if alive(p) and any(t in cmdline(p) for t in ours)]) and (
        time.monotonic() < end
    ):
        time.sleep(0.5)
    assert not left, f"processes of the deployment still run 20 s after stop: {left}"


def test_a_flower_run_directory_reads_like_a_lightning_one(tiny_model_dir, data_root, tmp_path):
    """eval --run / export / materialize rebuild a Flower run; compare and the notebook read it."""
    import sys

    from kit.compare.table import run_row
    from kit.finetune import export_run, materialize
    from kit.rebuild import load_run_model
    from kit.reporting import weights_digest

    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    s = _strategy(rc, tmp_path / "run").run(LocalGrid(client_app, rc, 3, tmp_path / "nodes"))
    model, _ = load_run_model(tmp_path / "run")  # from checkpoints/server.pt, digest-checked
    assert weights_digest(model) == s["global_weights_sha256"]
    seeds = export_run(tmp_path / "run", tmp_path / "run.seeds")
    assert materialize(seeds, tmp_path / "model") == s["global_weights_sha256"]
    row = run_row("ni", "fedkseed-pro", 1, tmp_path / "run")
    assert row["eval_loss_after"] == s["eval_loss_after"] and row["uplink_bytes_per_client_round"] > 0
    sys.path.insert(0, str(REPO / "notebooks"))
    try:
        import runs
    finally:
        sys.path.remove(str(REPO / "notebooks"))
    run = runs.load_run(tmp_path / "run")
    assert runs.method(run) == "fedkseed-pro" and runs.scenario(run).startswith("NI")
    assert list(run["metrics"].index) == [0, 1, 2] and "train/loss" in run["metrics"]
