"""The ClientApp: a SuperNode's clients, their model replica and its sync (kit/deploy/replica.py).

Node config (`flower-supernode --node-config`): `partition-id` and `num-partitions` (the node hosts
the clients c with c % num-partitions == partition-id), `state-dir` (where the replica lives; default
`$FEDKSEED_STATE_DIR` or ./fedkseed-node-<partition-id>). The run config names the recipe.
"""

from __future__ import annotations

import os

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from kit.deploy.recipe import recipe_from_run_config
from kit.deploy.replica import NodeReplica

app = ClientApp()


def node_replica(context: Context) -> NodeReplica:
    """This node's replica for the run's recipe, from the node config."""
    cfg = context.node_config
    if "partition-id" not in cfg or "num-partitions" not in cfg:
        raise ValueError("start the SuperNode with --node-config 'partition-id=I num-partitions=N'")
    pid, count = int(cfg["partition-id"]), int(cfg["num-partitions"])
    state = cfg.get("state-dir") or os.environ.get("FEDKSEED_STATE_DIR") or f"fedkseed-node-{pid}"
    return NodeReplica(recipe_from_run_config(context.run_config), str(state), pid, count)


def _sync(replica: NodeReplica, msg: Message) -> dict:
    s = msg.content["sync"]
    weights = msg.content["weights"].to_numpy_ndarrays() if "weights" in msg.content else None
    return replica.sync(int(s["target"]), int(s["first"]), list(s["downlinks"]), str(s["sync"]), weights)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Sync the replica to the previous round, train the named client, reply with its uplink bytes."""
    replica = node_replica(context)
    synced = _sync(replica, msg)
    t = msg.content["train"]
    result = replica.train(int(t["round"]), int(t["client"]))
    return Message(RecordDict({"uplink": ConfigRecord({**result, **synced})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Sync the replica to the round just aggregated and report its held-out eval loss."""
    replica = node_replica(context)
    synced = _sync(replica, msg)
    return Message(RecordDict({"eval": ConfigRecord({**replica.eval_loss(), **synced})}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which partitions this node hosts, how many clients the recipe has, its replica's round."""
    replica = node_replica(context)
    info = {
        "partition-id": replica.partition_id,
        "num-partitions": replica.num_partitions,
        "num-clients": replica.num_clients(),
        "replica-round": replica.saved_round(),
    }
    return Message(RecordDict({"node": ConfigRecord(info)}), reply_to=msg)
