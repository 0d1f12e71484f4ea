"""An in-process Flower Grid: the real ServerApp strategy and ClientApp, without a network or Ray.

    grid = LocalGrid(client_app, {"recipe": "recipes/quickstart.yaml"}, num_nodes=3, state_root="runs/nodes")
    FedKSeedStrategy(recipe, "runs/local").run(grid)

Each virtual node has its own Context (node config `partition-id`, `num-partitions`, `state-dir`)
and gets the messages as Flower Message objects; replies go through `Message(..., reply_to=...)`.
A node in `down` is gone as the SuperLink reports it once its heartbeat expired (an error reply,
NODE_UNAVAILABLE); a node in `silent` answers nothing (killed, its heartbeat not yet expired: only
the server's deadline ends the round). Flower's own simulation runtime needs Ray
(kit/deploy/simulate.py); this grid keeps tests and quick runs in one process.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    """`num_nodes` virtual SuperNodes (node ids 1..n) running `client_app` in this process."""

    def __init__(self, client_app: ClientApp, run_config: dict, num_nodes: int, state_root: str | Path):
        self.client_app, self.run_config = client_app, dict(run_config)
        self.state_root, self.num_partitions = Path(state_root), num_nodes
        self.contexts: dict[int, Context] = {}
        self.down: set[int] = set()  # gone: the SuperLink answers NODE_UNAVAILABLE for them
        self.silent: set[int] = set()  # killed, still "online": messages to them get no reply
        self._ids = itertools.count(1)
        self._run = Run.create_empty(run_id=1)
        # what Flower's runtimes set before a ServerApp runs: Message() reads the run id from it
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        self._replies: dict[str, Message] = {}
        for pid in range(num_nodes):
            self.add_node(pid)

    def add_node(self, partition_id: int) -> int:
        """Start a node hosting `partition_id` (a restarted node: a new id, the same state dir)."""
        node = next(self._ids)
        config = {
            "partition-id": partition_id,
            "num-partitions": self.num_partitions,
            "state-dir": str(self.state_root / f"node-{partition_id}"),
            "worker": False,  # the ClientApp does the work in this process
        }
        self.contexts[node] = Context(1, node, config, RecordDict(), self.run_config)
        return node

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.down]  # silent ones still look online

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"  # as the SuperLink does
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            if node in self.down or node not in self.contexts:
                gone = Error(ErrorCode.NODE_UNAVAILABLE, f"node {node} is not available")
                self._replies[msg.metadata.message_id] = Message(gone, reply_to=msg)
            elif node not in self.silent:
                self._replies[msg.metadata.message_id] = self.client_app(msg, self.contexts[node])
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
