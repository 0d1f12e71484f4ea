"""Secure aggregation of FedKSeed's scalar uplinks on Flower's Message API (the masks: kit/privacy/secagg.py).

Per round, before the train messages:
  1) key query: each node hosting a client that trains this round makes a fresh key pair per client
     (the private key stays in its state dir) and answers with the public keys;
  2) each train message carries every masked peer's public key; the node trains its client as usual,
     then replaces the uplink by the masked fixed-point vector [w * scalars, w] (`FedKSeed.secure_vector`);
  3) the server adds the masked vectors in Z_{2^64}: with every masked client present the masks cancel
     and it learns sum_c [w_c * acc_c, w_c], i.e. the weighted mean G, and no client's scalars.
A masked client whose uplink does not come makes the round's sum unrecoverable (there is no dropout
recovery): the round then makes no update (G = 0), is recorded, and the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from kit.federation.screening import Accepted, Screening
from kit.methods.base import Method
from kit.privacy import secagg
from kit.rounds.client import ClientResult
from kit.rounds.plan import RoundPlan
from kit.rounds.server import RoundOutcome

log = logging.getLogger(__name__)
RECORD = "secagg"  # the record of the key query, of its reply's values and of the train messages


def refusal(method: Method) -> str | None:
    """Why `method` (as configured) cannot be aggregated securely (None: it can)."""
    if not hasattr(method, "secure_refusal"):
        return f"secure aggregation covers FedKSeed's scalar uplinks; {method.name} sends tensors"
    return method.secure_refusal()


# -- server ------------------------------------------------------------------------------------------
def key_queries(server_round: int, clients_of: Mapping[int, Sequence[int]]) -> list[Message]:
    """One key query per node (node -> its clients training this round)."""
    return [
        Message(
            RecordDict({RECORD: ConfigRecord({"round": server_round, "clients": list(clients)})}),
            dst_node_id=node,
            message_type=MessageType.QUERY,
        )
        for node, clients in clients_of.items()
    ]


def public_keys(replies: Iterable[Message]) -> dict[int, bytes]:
    """Client -> public key from the key queries' replies (error replies are skipped)."""
    keys: dict[int, bytes] = {}
    for reply in replies:
        if reply.has_error():
            continue
        values = reply.content["node"]
        keys.update(zip(values["clients"], values["public-keys"], strict=True))
    return keys


def peers_record(keys: Mapping[int, bytes]) -> ConfigRecord:
    """What every train message carries: the round's masked clients and their public keys."""
    order = sorted(keys)
    return ConfigRecord({"clients": order, "public-keys": [keys[c] for c in order]})


def secure_outcome(method: Method, plan: RoundPlan, results: Sequence[ClientResult], masked) -> RoundOutcome:
    """The round's downlink from the masked uplinks' sum; the server never unmasks a single uplink."""
    arrived = sorted({r.client for r in results})
    total = None
    if arrived and arrived == sorted(masked):
        sizes = {len(r.wire) for r in results}
        if len(sizes) == 1:
            size = sizes.pop() // 8
            total = secagg.decode(secagg.sum_masked([secagg.from_bytes(r.wire, size) for r in results]))
    if total is None and arrived:
        log.warning(
            "round %d: secure aggregation needs every masked client (%s), got %s: no update this round",
            plan.round, sorted(masked), arrived,
        )  # fmt: skip
    accepted = [Accepted(c, b"", None) for c in arrived] if total is not None else []
    return RoundOutcome(method.aggregate_secure(plan.round, total), Screening(accepted=accepted))


# -- node --------------------------------------------------------------------------------------------
def _key_file(directory: Path, server_round: int, client: int) -> Path:
    return directory / f"secagg-{server_round}-{client}.key"


def publish_keys(directory: Path, request: Mapping) -> dict:
    """A fresh key pair per named client: the private key to `directory` (0600), the public ones back."""
    server_round, clients = int(request["round"]), [int(c) for c in request["clients"]]
    publics = []
    for c in clients:
        private, public = secagg.key_pair()
        path = _key_file(directory, server_round, c)
        path.touch(mode=0o600)
        path.write_bytes(private)
        publics.append(public)
    return {"clients": clients, "public-keys": publics}


def mask_uplink(
    method: Method, directory: Path, server_round: int, result: ClientResult, peers: Mapping
) -> bytes:
    """The client's uplink as its masked vector (its private key is used once, then deleted)."""
    path = _key_file(directory, server_round, result.client)
    private = path.read_bytes()
    path.unlink()
    keys = dict(zip(peers["clients"], peers["public-keys"], strict=True))
    secrets = {p: secagg.shared_secret(private, pub) for p, pub in keys.items() if p != result.client}
    vector = method.secure_vector(server_round, result.wire, result.num_examples)
    return secagg.to_bytes(secagg.mask(secagg.encode(vector), result.client, secrets, server_round))
