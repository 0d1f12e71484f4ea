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


def _request(msg: Message) -> dict:
    """The message's records as plain values for the node's work."""
    request = {k: dict(msg.content[k]) for k in ("sync", "train", "secagg") if k in msg.content}
    if "weights" in msg.content:  # the server chose a full-weights download
        request["weights"] = msg.content["weights"].to_numpy_ndarrays()
    return request


def make_client_app(
    run_config: dict | None = None, node_defaults: dict | None = None, state_root: str | None = None
) -> ClientApp:
    """The ClientApp; `run_config` replaces the context's (Flower's `run_simulation` passes none),
    `node_defaults` fill node config keys, `state_root` puts the replica of partition i in
    STATE_ROOT/node-i when the node config names no `state-dir`."""

    def reply(msg: Message, context: Context, op: str, record: str) -> Message:
        node = {**(node_defaults or {}), **context.node_config}
        if state_root and "state-dir" not in node:
            node["state-dir"] = f"{state_root}/node-{node.get('partition-id')}"
        rc, request = run_config or context.run_config, _request(msg)
        if node.get("worker", True):
            values = call(op, rc, node, request)
        else:  # in-process grids: the work runs here (imports torch)
            from kit.deploy.node_ops import handle

            values = handle(op, rc, node, request)
        return Message(RecordDict({record: ConfigRecord(values)}), reply_to=msg)

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        """Sync the replica to the previous round, train the named client, reply with its uplink."""
        return reply(msg, context, "train", "uplink")

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Sync the replica to the round just aggregated and report its held-out eval loss."""
        return reply(msg, context, "evaluate", "eval")

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        """Which partitions this node hosts, how many clients the recipe has, its replica's round."""
        return reply(msg, context, "query", "node")

    return client_app


app = make_client_app()
