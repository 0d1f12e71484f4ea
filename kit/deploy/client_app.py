"""The ClientApp: a SuperNode's clients, their model replica and its sync (kit/deploy/replica.py).

Node config (`flower-supernode --node-config`): `partition-id` and `num-partitions` (the node hosts
the clients c with c % num-partitions == partition-id), `state-dir` (where the replica lives; default
`$FEDKSEED_STATE_DIR` or ./fedkseed-node-<partition-id>), `worker` (default true: the work runs in
the node's long-lived worker, kit/deploy/node_link.py; false: in this process). The run config names
the recipe. This module imports only flwr and the standard library: Flower starts a fresh process
for every message, and torch is loaded once per node, in the worker.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from kit.deploy.node_link import call

app = ClientApp()


def _request(msg: Message) -> dict:
    """The message's records as plain values for the node's work."""
    request = {k: dict(msg.content[k]) for k in ("sync", "train") if k in msg.content}
    if "weights" in msg.content:  # the server chose a full-weights download
        request["weights"] = msg.content["weights"].to_numpy_ndarrays()
    return request


def _reply(msg: Message, context: Context, op: str, record: str) -> Message:
    values = call(op, context.run_config, context.node_config, _request(msg))
    return Message(RecordDict({record: ConfigRecord(values)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Sync the replica to the previous round, train the named client, reply with its uplink bytes."""
    return _reply(msg, context, "train", "uplink")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Sync the replica to the round just aggregated and report its held-out eval loss."""
    return _reply(msg, context, "evaluate", "eval")


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which partitions this node hosts, how many clients the recipe has, its replica's round."""
    return _reply(msg, context, "query", "node")
