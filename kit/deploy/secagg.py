"""Secure aggregation of FedKSeed's scalar uplinks on Flower's Message API, with dropout recovery
(Bonawitz et al. 2017's double masking; the primitives: kit/privacy/secagg.py).

Per round, for the clients that train (M, their nodes asked with Flower QUERY messages):
  1) keys: each client gets two fresh key pairs (c: to encrypt shares, s: to mask); the private keys
     stay in its node's state dir, the public ones go to the server;
  2) shares: each client draws a self-mask seed b, splits its s private key and b into Shamir shares
     (threshold t = |M| // 2 + 1) and encrypts one share of each to every client of M (ECDH on the c
     keys); the server only routes the ciphertexts;
  3) train: each train message carries M's public keys and the ciphertexts addressed to that client;
     the node trains it, then sends [w * scalars, w] in fixed point plus its pairwise masks (+ towards a
     larger id, - towards a smaller) and its self mask, instead of the uplink;
  4) unmask: the clients whose masked vectors arrived (S) reveal, for every client of S, its share of
     b, and for every client of M that did not arrive, its share of the s private key. With t shares the
     server rebuilds them, removes the self masks of S and the masks S shared with the missing ones:
     sum over S of [w * scalars, w], i.e. the weighted mean G of the clients that arrived.
A client's own vector stays hidden: its pairwise masks need its s key (revealed only if it is missing,
and then its vector is not in the sum), its self mask its seed b (revealed only if it arrived).
Fewer than t answers to step 4 leave the sum unrecoverable: the round makes no update (recorded).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from kit.federation.screening import Accepted, Screening
from kit.methods.base import Method
from kit.privacy import secagg
from kit.rounds.client import ClientResult
from kit.rounds.server import RoundOutcome

log = logging.getLogger(__name__)
RECORD = "secagg"  # the record of the protocol's queries and of the train messages


def refusal(method: Method) -> str | None:
    """Why `method` (as configured) cannot be aggregated securely (None: it can)."""
    if not hasattr(method, "secure_refusal"):
        return f"secure aggregation covers FedKSeed's scalar uplinks; {method.name} sends tensors"
    return method.secure_refusal()


def threshold(num: int) -> int:
    """Shares needed to rebuild a secret: a majority of the round's masked clients."""
    return num // 2 + 1


# -- server --------------------------------------------------------------------------------------
class SecAggServer:
    """The server's side of one round. `exchange(messages)` sends and returns the replies that came."""

    def __init__(self, server_round: int, clients_of: Mapping[int, Sequence[int]], exchange) -> None:
        self.round, self.exchange = server_round, exchange
        self.clients_of = {n: sorted(cs) for n, cs in clients_of.items() if cs}
        self.node_of = {c: n for n, cs in self.clients_of.items() for c in cs}
        self.c_keys: dict[int, bytes] = {}
        self.s_keys: dict[int, bytes] = {}
        self.inbox: dict[int, list[tuple[int, bytes]]] = {}  # recipient -> (sender, ciphertext)
        self.everyone: list[int] = []  # the clients the shares were made for (their order: share index)

    def _ask(self, stage: str, per_node: Mapping[int, Sequence[int]], **extra) -> list[dict]:
        msgs = [
            Message(
                RecordDict(
                    {
                        RECORD: ConfigRecord(
                            {"stage": stage, "round": self.round, "clients": list(cs), **extra}
                        )
                    }
                ),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node, cs in per_node.items()
            if cs
        ]
        return [dict(r.content["node"]) for r in self.exchange(msgs) if not r.has_error()]

    def setup(self) -> list[int]:
        """Steps 1 and 2 (keys, shares); returns the masked clients M (those that completed both)."""
        for v in self._ask("keys", self.clients_of):
            for c, ck, sk in zip(v["clients"], v["c-keys"], v["s-keys"], strict=True):
                self.c_keys[c], self.s_keys[c] = ck, sk
        self.everyone = sorted(self.c_keys)
        per_node = self._hosted(self.everyone)
        keys = {"all": self.everyone, "c-keys": [self.c_keys[c] for c in self.everyone]}
        done = set()
        for v in self._ask("shares", per_node, **keys):
            for sender, to, cipher in zip(v["from"], v["to"], v["cipher"], strict=True):
                self.inbox.setdefault(to, []).append((sender, cipher))
                done.add(sender)
        return sorted(done)

    def _hosted(self, clients: Iterable[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for c in clients:
            out.setdefault(self.node_of[c], []).append(c)
        return out

    def train_record(self, client: int, masked: Sequence[int]) -> ConfigRecord:
        """What `client`'s train message carries: M's public keys, its ciphertexts, the round's t."""
        inbox = [(s, c) for s, c in self.inbox.get(client, []) if s in masked]
        return ConfigRecord(
            {
                "clients": list(masked),
                "c-keys": [self.c_keys[c] for c in masked],
                "s-keys": [self.s_keys[c] for c in masked],
                "from": [s for s, _ in inbox],
                "cipher": [c for _, c in inbox],
            }
        )

    def total(self, results: Sequence[ClientResult], masked: Sequence[int]) -> np.ndarray | None:
        """Step 4: the decoded sum of the arrived clients' vectors (None: not recoverable)."""
        arrived = sorted({r.client for r in results} & set(masked))
        missing = sorted(set(masked) - set(arrived))
        sizes = {len(r.wire) for r in results}
        if not arrived or len(sizes) != 1:
            return None
        size = sizes.pop() // 8
        b_parts: dict[int, list[bytes]] = {}
        s_parts: dict[int, list[bytes]] = {}
        extra = {"arrived": arrived, "missing": missing}
        for v in self._ask("unmask", self._hosted(arrived), **extra):
            for owner, kind, part in zip(v["owner"], v["kind"], v["share"], strict=True):
                (b_parts if kind == "b" else s_parts).setdefault(owner, []).append(part)
        t = threshold(len(self.everyone))
        if any(len(b_parts.get(u, [])) < t for u in arrived) or any(
            len(s_parts.get(v, [])) < t for v in missing
        ):
            return None
        total = secagg.sum_masked([secagg.from_bytes(r.wire, size) for r in results if r.client in arrived])
        for u in arrived:
            total -= secagg.self_mask(secagg.rebuild(b_parts[u]), self.round, size)
        for v in missing:
            s_private = secagg.rebuild(s_parts[v])
            for u in arrived:
                secret = secagg.shared_secret(s_private, self.s_keys[u])
                total -= secagg.pair_mask(u, v, secret, self.round, size)
        return secagg.decode(total)

    def outcome(self, method: Method, results: Sequence[ClientResult], masked: Sequence[int]) -> RoundOutcome:
        """The round's downlink from the recovered sum; the server never unmasks a single uplink."""
        total = self.total(results, masked)
        arrived = sorted({r.client for r in results})
        if total is None and arrived:
            log.warning("round %d: secure aggregation could not recover the sum: no update", self.round)
        accepted = [Accepted(c, b"", None) for c in arrived] if total is not None else []
        return RoundOutcome(method.aggregate_secure(self.round, total), Screening(accepted=accepted))


# -- node ----------------------------------------------------------------------------------------
def _state(directory: Path, server_round: int, client: int) -> Path:
    return directory / f"secagg-{server_round}-{client}.json"


def _load(directory: Path, server_round: int, client: int) -> dict:
    return json.loads(_state(directory, server_round, client).read_text())


def _save(directory: Path, server_round: int, client: int, state: dict) -> None:
    path = _state(directory, server_round, client)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def node_stage(directory: Path, request: Mapping) -> dict:
    """A node's answer to a protocol query (`stage`: keys, shares or unmask) for its named clients."""
    stage, rnd, clients = request["stage"], int(request["round"]), [int(c) for c in request["clients"]]
    if stage == "keys":
        out = {"clients": clients, "c-keys": [], "s-keys": []}
        for c in clients:
            (c_private, c_public), (s_private, s_public) = secagg.key_pair(), secagg.key_pair()
            _save(directory, rnd, c, {"c": c_private.hex(), "s": s_private.hex()})
            out["c-keys"].append(c_public)
            out["s-keys"].append(s_public)
        return out
    if stage == "shares":
        everyone, c_keys = list(request["all"]), list(request["c-keys"])
        t, out = threshold(len(everyone)), {"from": [], "to": [], "cipher": []}
        for c in clients:
            state = _load(directory, rnd, c)
            seed = os.urandom(32)
            state["b"] = seed.hex()
            _save(directory, rnd, c, state)
            c_private = bytes.fromhex(state["c"])
            s_shares = secagg.shares(bytes.fromhex(state["s"]), t, len(everyone))
            b_shares = secagg.shares(seed, t, len(everyone))
            for i, (peer, peer_key) in enumerate(zip(everyone, c_keys, strict=True)):
                body = {"from": c, "to": peer, "s": s_shares[i].hex(), "b": b_shares[i].hex()}
                cipher = secagg.seal(secagg.shared_secret(c_private, peer_key), json.dumps(body).encode())
                out["from"].append(c)
                out["to"].append(peer)
                out["cipher"].append(cipher)
        return out
    if stage == "unmask":
        arrived, missing = set(request["arrived"]), set(request["missing"])
        out = {"owner": [], "kind": [], "share": []}
        for c in clients:
            state = _load(directory, rnd, c)
            for owner, body in _opened(state, c).items():
                if owner in arrived or owner in missing:  # never both: b of the arrived, s of the missing
                    kind = "b" if owner in arrived else "s"
                    out["owner"].append(owner)
                    out["kind"].append(kind)
                    out["share"].append(bytes.fromhex(body[kind]))
            _state(directory, rnd, c).unlink()
        return out
    raise ValueError(f"unknown secure aggregation stage {stage!r}")


def _opened(state: dict, me: int) -> dict[int, dict]:
    """The shares sent to `me`, decrypted and checked to be from their sender to `me`."""
    c_private = bytes.fromhex(state["c"])
    c_keys = dict(zip(state["peers"], state["c-keys"], strict=True))
    out = {}
    for sender, cipher in zip(state["from"], state["cipher"], strict=True):
        body = json.loads(
            secagg.unseal(secagg.shared_secret(c_private, bytes.fromhex(c_keys[sender])), cipher)
        )
        if body["from"] == sender and body["to"] == me:
            out[sender] = body
    return out


def mask_uplink(
    method: Method, directory: Path, server_round: int, result: ClientResult, peers: Mapping
) -> bytes:
    """The client's uplink as its masked vector; keeps the shares it received for the unmask step."""
    state = _load(directory, server_round, result.client)
    masked = [int(c) for c in peers["clients"]]
    state.update(
        peers=masked,
        **{"c-keys": [k.hex() for k in peers["c-keys"]]},
        **{"from": [int(s) for s in peers["from"]], "cipher": [c.decode() for c in peers["cipher"]]},
    )
    _save(directory, server_round, result.client, state)
    s_private = bytes.fromhex(state["s"])
    s_keys = dict(zip(masked, peers["s-keys"], strict=True))
    secrets = {p: secagg.shared_secret(s_private, k) for p, k in s_keys.items() if p != result.client}
    vector = method.secure_vector(server_round, result.wire, result.num_examples)
    q = secagg.mask(secagg.encode(vector), result.client, secrets, server_round, bytes.fromhex(state["b"]))
    return secagg.to_bytes(q)
