"""The server's view of its SuperNodes: who hosts which clients, which round each replica holds, and
sending messages under a deadline (Flower's vocabulary stays here and in the strategy).

A node hosts the clients `c` with `c % num_partitions == partition_id`; a restarted node gets a new
node id and claims its partition again (the newest claim wins).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from kit.deploy.messages import NodeInfo

QUERY = MessageType.QUERY  # which partitions a node hosts


class Nodes:
    """The discovered nodes of a grid and the rounds their replicas hold (as last reported)."""

    def __init__(self, round_timeout: float) -> None:
        if round_timeout <= 0:
            raise ValueError(f"round-timeout must be > 0 seconds, got {round_timeout}")
        self.round_timeout = round_timeout
        self.parts: dict[int, tuple[int, int]] = {}  # node id -> (partition id, num partitions)
        self.synced: dict[int, int] = {}  # node id -> the round its replica holds
        self.num_clients: int | None = None
        self.dropped_examples: dict = {}

    def exchange(
        self, grid: Grid, messages: Iterable[Message]
    ) -> tuple[list[Message], list[Message], list[Message]]:
        """Send `messages` and collect replies until all came or `round_timeout` passed.

        Returns (replies, unanswered, failed): a killed SuperNode looks alive to the SuperLink until
        its heartbeat expires (then the SuperLink answers for it with an error), so the deadline
        bounds the round regardless; `failed` are the messages answered by an error. Polls every
        0.2 s (Flower's `send_and_receive` sleeps 3 s between polls)."""
        messages = list(messages)
        if not messages:
            return [], [], []
        ids = list(grid.push_messages(messages))
        sent = dict(zip(ids, messages, strict=True))
        waiting, replies = set(ids), []
        end = time.monotonic() + self.round_timeout
        while waiting:
            got = list(grid.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or time.monotonic() >= end:
                break
            time.sleep(0.2)
        failed = [sent[r.metadata.reply_to_message_id] for r in replies if r.has_error()]
        return replies, [sent[i] for i in ids if i in waiting], failed

    def discover(self, grid: Grid) -> None:
        """Ask nodes not seen yet which partitions they host and which round their replica holds."""
        new = [n for n in grid.get_node_ids() if n not in self.parts]
        if not new:
            return
        ask = [Message(RecordDict(), dst_node_id=n, message_type=QUERY) for n in new]
        for reply in self.exchange(grid, ask)[0]:  # a node that answers late is asked again
            if reply.has_error():
                continue
            info = NodeInfo.from_values(dict(reply.content["node"]))
            node, n = reply.metadata.src_node_id, info.num_clients
            if self.num_clients is not None and n != self.num_clients:
                raise RuntimeError(f"node {node} sees {n} clients, others {self.num_clients}: same recipe?")
            self.num_clients, self.dropped_examples = n, info.dropped_examples
            self.parts[node] = (info.partition_id, info.num_partitions)
            self.synced[node] = info.replica_round

    def owner(self, client_id: int) -> int | None:
        """The node hosting `client_id` (the newest to claim it when a node was restarted)."""
        owner = None
        for node, (pid, count) in self.parts.items():  # dicts keep discovery order
            if client_id % count == pid:
                owner = node
        return owner
