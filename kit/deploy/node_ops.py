"""What a SuperNode does for each message, on plain values: sync its replica, train, evaluate, query.

    handle("train", run_config, node_config, {"sync": {...}, "train": {"round": 3, "client": 22}})

Called by the node's long-lived worker (kit/deploy/node_worker.py) or, for in-process grids, by the
ClientApp itself. Requests and replies are dicts of ints, floats, strings, bytes and arrays (what
the ClientApp reads from and writes to Flower records), so the ClientApp process never needs torch.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kit.deploy.messages import EvalReply, NodeInfo, SyncReport, SyncRequest, TrainReply, TrainRequest
from kit.deploy.node_link import state_dir
from kit.deploy.recipe import recipe_from_run_config
from kit.deploy.replica import NodeReplica
from kit.deploy.secagg import mask_uplink, node_stage


def node_replica(run_config: dict, node_config: dict) -> NodeReplica:
    """This node's replica for the run's recipe, from the node config."""
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise ValueError("start the SuperNode with --node-config 'partition-id=I num-partitions=N'")
    pid, count = int(node_config["partition-id"]), int(node_config["num-partitions"])
    return NodeReplica(recipe_from_run_config(run_config), state_dir(node_config), pid, count)


def _sync(replica: NodeReplica, request: dict) -> SyncReport:
    return replica.sync(SyncRequest.from_values(request["sync"]), request.get("weights"))


@contextmanager
def replica_lock(directory: Path) -> Iterator[None]:
    """One message at a time on a node's replica, across processes and threads (an exclusive `flock`).

    A SuperNode's worker takes messages one by one, but Flower's Ray simulation can run two messages
    for the same virtual node on two actors at once: both would sync and rewrite the same replica.
    """
    with open(directory / "replica.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def handle(op: str, run_config: dict, node_config: dict, request: dict) -> dict:
    """Run one message's work (`op`: train | evaluate | query) and return the reply's values."""
    replica = node_replica(run_config, node_config)
    if op == "train":  # sync to the previous round, then the planned steps of the named client
        with replica_lock(replica.dir):
            synced = _sync(replica, request)
            train = TrainRequest.from_values(request["train"])
            r = replica.train(train)
            wire = r.wire
            if "secagg" in request:  # secure aggregation: the masked vector instead of the uplink
                wire = mask_uplink(replica.rt.method, replica.dir, train.round, r, request["secagg"])
            reply = TrainReply(r.client, wire, r.num_examples, r.loss_sum, r.steps, r.skipped, synced)
            return reply.values()
    if op == "evaluate":  # sync to the round just aggregated, then the held-out loss
        with replica_lock(replica.dir):
            synced = _sync(replica, request)
            return EvalReply(replica.eval_loss(), synced).values()
    if op == "query" and "secagg" in request:  # a step of secure aggregation (keys, shares, unmask)
        return node_stage(replica.dir, request["secagg"])
    if op == "query":
        info = NodeInfo(
            replica.partition_id,
            replica.num_partitions,
            replica.num_clients(),
            replica.saved_round(),
            replica.rt.dm.dropped,
        )
        return info.values()
    raise ValueError(f"unknown node operation {op!r} (expected train, evaluate or query)")
