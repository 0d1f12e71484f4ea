"""The typed messages between the strategy and a node's worker (frozen dataclasses).

On Flower they travel as `ConfigRecord`s of plain values (kebab-case keys, Flower's convention):
`values()` writes one, `from_values()` reads one back and checks it. Only the standard library here,
like the ClientApp that forwards them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


def _get(values: Mapping, key: str, kind):
    if key not in values:
        raise ValueError(f"message lacks {key!r}: the server and the node run different kit versions?")
    return kind(values[key])


@dataclass(frozen=True)
class SyncRequest:
    """Bring the replica to round `target`: the downlinks of rounds first..target (`kind` names the
    catch-up: none, replay, merged or weights; the weights travel beside, as an ArrayRecord)."""

    target: int
    first: int
    kind: str
    downlinks: tuple[bytes, ...] = ()

    def values(self) -> dict:
        return {
            "target": self.target,
            "first": self.first,
            "sync": self.kind,
            "downlinks": list(self.downlinks),
        }

    @classmethod
    def from_values(cls, v: Mapping) -> SyncRequest:
        downlinks = tuple(bytes(d) for d in _get(v, "downlinks", list))
        return cls(_get(v, "target", int), _get(v, "first", int), _get(v, "sync", str), downlinks)


@dataclass(frozen=True)
class SyncReport:
    """What a node's sync did, and its replica's round and weights digest after it."""

    kind: str
    passes: int
    replica_round: int
    replica_digest: str

    def values(self) -> dict:
        return {
            "sync": self.kind,
            "sync-passes": self.passes,
            "replica-round": self.replica_round,
            "replica-digest": self.replica_digest,
        }

    @classmethod
    def from_values(cls, v: Mapping) -> SyncReport:
        keys = (("sync", str), ("sync-passes", int), ("replica-round", int), ("replica-digest", str))
        return cls(*(_get(v, k, kind) for k, kind in keys))


@dataclass(frozen=True)
class TrainRequest:
    """Train `client` for `steps` local steps of round `round`."""

    round: int
    client: int
    steps: int

    def values(self) -> dict:
        return {"round": self.round, "client": self.client, "steps": self.steps}

    @classmethod
    def from_values(cls, v: Mapping) -> TrainRequest:
        return cls(_get(v, "round", int), _get(v, "client", int), _get(v, "steps", int))


@dataclass(frozen=True)
class TrainReply:
    """A client's uplink and counters (as `kit.rounds.ClientResult`), with the node's sync report."""

    client: int
    payload: bytes
    num_examples: int
    loss_sum: float
    steps: int
    skipped: int
    sync: SyncReport

    def values(self) -> dict:
        return {
            "client": self.client,
            "payload": self.payload,
            "num-examples": self.num_examples,
            "loss-sum": self.loss_sum,
            "steps": self.steps,
            "skipped": self.skipped,
            **self.sync.values(),
        }

    @classmethod
    def from_values(cls, v: Mapping) -> TrainReply:
        keys = (("client", int), ("payload", bytes), ("num-examples", int), ("loss-sum", float))
        head = [_get(v, k, kind) for k, kind in keys]
        return cls(*head, _get(v, "steps", int), _get(v, "skipped", int), SyncReport.from_values(v))


@dataclass(frozen=True)
class EvalReply:
    """The held-out eval loss of the replica synced to the round asked."""

    eval_loss: float
    sync: SyncReport

    def values(self) -> dict:
        return {"eval-loss": self.eval_loss, **self.sync.values()}

    @classmethod
    def from_values(cls, v: Mapping) -> EvalReply:
        return cls(_get(v, "eval-loss", float), SyncReport.from_values(v))


@dataclass(frozen=True)
class NodeInfo:
    """A node's answer to the discovery query."""

    partition_id: int
    num_partitions: int
    num_clients: int
    replica_round: int
    dropped_examples: dict

    def values(self) -> dict:
        return {
            "partition-id": self.partition_id,
            "num-partitions": self.num_partitions,
            "num-clients": self.num_clients,
            "replica-round": self.replica_round,
            "dropped-examples": json.dumps(self.dropped_examples, sort_keys=True),
        }

    @classmethod
    def from_values(cls, v: Mapping) -> NodeInfo:
        keys = (("partition-id", int), ("num-partitions", int), ("num-clients", int), ("replica-round", int))
        dropped = json.loads(str(v.get("dropped-examples", "{}")))
        return cls(*(_get(v, k, kind) for k, kind in keys), dropped)
