"""Untrusted uplinks: each kind of bad message is rejected, counted and logged, never aggregated.

Nothing in the simulation sends bad bytes, so these craft them: FedKSeed's scalar uplinks through
the method's own `aggregate_train`, tensor uplinks through `screen_uplinks` with the tensor decoder.
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pytest
import torch

from kit.federation.aggregate import aggregate, client_weights
from kit.federation.messages import (
    REASONS,
    UPLINK,
    Uplink,
    decode_downlink,
    encode_uplink,
    max_uplink_size,
)
from kit.federation.screening import screen_uplinks
from kit.federation.seeds import SeedPool
from kit.federation.tensors import decode_tensors, encode_tensors
from kit.methods import FedSettings
from kit.methods.fedkseed import FedKSeed

K = 16


def _reseal(data: bytes) -> bytes:
    """A message with a valid checksum over whatever bytes it now holds (a deliberate forgery)."""
    body = data[:-4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def _scalars(client: int, touched: int = 3) -> np.ndarray:
    s = np.zeros(K, dtype=np.float32)
    s[client % K : client % K + touched] = np.float32(client + 1)
    return s


def _method() -> FedKSeed:
    hp = {"lr": 1e-3, "weight_decay": 0.0, "zo_eps": 1e-2, "grad_clip": None}
    return FedKSeed(hp, FedSettings(seed=3, num_seeds=K, local_steps=4))  # bound 4 * 100 / 0.02


def _up(method: FedKSeed, rnd: int, client: int, scalars=None, fingerprint=None) -> bytes:
    scalars = _scalars(client) if scalars is None else scalars
    return encode_uplink(Uplink(rnd, client, scalars), fingerprint or method.pool.fingerprint)


def _with_inf(wire: bytes) -> bytes:
    data = bytearray(wire)
    data[-8:-4] = np.float32(np.inf).tobytes()  # the last scalar, before the checksum
    return _reseal(bytes(data))


# (sender, bytes builder) per kind, all for round 2 of a round that sampled clients 0..5
BAD = {
    "unknown_client": lambda m: (9, _up(m, 2, 9)),
    "duplicate": lambda m: (0, _up(m, 2, 0)),  # client 0's uplink again: a replay
    "oversize": lambda m: (1, _up(m, 2, 1, np.ones(K, dtype=np.float32)) + b"\0"),
    "truncated": lambda m: (1, _up(m, 2, 1)[:-5]),
    "corrupt": lambda m: (1, _up(m, 2, 1)[:34] + bytes([_up(m, 2, 1)[34] ^ 0x40]) + _up(m, 2, 1)[35:]),
    "wrong_round": lambda m: (2, _up(m, 1, 2)),
    "wrong_pool": lambda m: (2, _up(m, 2, 2, fingerprint=SeedPool(K, 4).fingerprint)),
    "client_mismatch": lambda m: (3, _up(m, 2, 4)),
    "non_finite": lambda m: (3, _with_inf(_up(m, 2, 3))),
    "out_of_bound": lambda m: (3, _up(m, 2, 3, np.full(K, 3e38, dtype=np.float32))),
    "malformed": lambda m: (4, _reseal(b"XXXX" + _up(m, 2, 4)[4:])),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_kind_of_bad_uplink_is_rejected_counted_and_logged(reason, caplog):
    m = _method()
    m.server.server_round = 1  # round 1 is done: this is round 2
    good = (0, _up(m, 2, 0))
    sender, bad = BAD[reason](m)
    with caplog.at_level(logging.WARNING, logger="kit.federation.screening"):
        down, screening = m.aggregate_train(2, [good, (sender, bad)], {c: 10 * (c + 1) for c in range(6)})
    assert screening.counts() == {r: int(r == reason) for r in REASONS}
    assert [a.client for a in screening.accepted] == [0]
    [line] = caplog.messages
    assert f"client {sender}" in line and reason in line
    # only the good uplink is aggregated, its weight renormalised to 1
    g = decode_downlink(down, K, m.pool.fingerprint, expected_round=2).scalars
    assert np.array_equal(g, _scalars(0))


def test_wrong_k_is_a_wrong_pool_and_every_reason_is_exercised():
    m = _method()
    sparse_k32 = np.zeros(32, dtype=np.float32)
    sparse_k32[5] = 1.0  # small enough to pass the size check for K = 16
    wire = encode_uplink(Uplink(1, 0, sparse_k32), m.pool.fingerprint)
    _, screening = m.aggregate_train(1, [(0, wire)], {0: 1})
    assert [r.reason for r in screening.rejected] == ["wrong_pool"]
    assert len(_up(m, 1, 1, np.ones(K, dtype=np.float32))) == max_uplink_size(K)  # dense is the largest
    assert set(BAD) == set(REASONS)


def test_good_uplinks_are_aggregated_with_weights_renormalised_over_the_accepted():
    m = _method()
    uplinks = [(c, _up(m, 1, c)) for c in (4, 0, 2)]  # arrival order is not client order
    uplinks.insert(1, (1, _up(m, 1, 1)[:-3]))  # client 1's uplink is truncated
    samples = {0: 10, 1: 20, 2: 30, 4: 40, 5: 50}  # client 5 was sampled but never sent
    down, screening = m.aggregate_train(1, uplinks, samples)
    assert [a.client for a in screening.accepted] == [0, 2, 4]
    expected = aggregate([_scalars(c) for c in (0, 2, 4)], client_weights([10, 30, 40])).astype(np.float32)
    assert np.array_equal(decode_downlink(down, K, m.pool.fingerprint).scalars, expected)


def test_a_round_with_nothing_accepted_sends_no_update():
    m = _method()
    down, screening = m.aggregate_train(1, [(0, b"junk")], {0: 10, 1: 10})
    assert screening.counts()["truncated"] == 1 and not screening.accepted
    decoded = decode_downlink(down, K, m.pool.fingerprint, expected_round=1)
    assert not decoded.scalars.any() and m.server.server_round == 1  # G = 0, the round still counts


SPEC = [("w", (2, 3)), ("b", (3,))]


def _tensor_up(rnd: int, client: int, w: float = 1.0) -> bytes:
    t = {"w": torch.full((2, 3), w), "b": torch.arange(3.0)}
    return encode_tensors(UPLINK, rnd, client, t, "float32")


def _tensor_decode(rnd: int):
    def decode(wire: bytes):
        msg = decode_tensors(wire, UPLINK, SPEC, "float32", expected_round=rnd)
        return msg.client_id, msg.tensors

    return decode


def test_bad_tensor_uplinks_are_rejected_with_their_reason():
    good = _tensor_up(3, 0)
    nan = bytearray(_tensor_up(3, 1))
    nan[-8:-4] = np.float32(np.nan).tobytes()  # the last value of "b"
    uplinks = [
        (0, good),
        (1, _reseal(bytes(nan))),
        (2, _tensor_up(2, 2)),
        (3, _tensor_up(3, 4)),
        (4, good[:-9]),
        (5, good[:30] + bytes([good[30] ^ 1]) + good[31:]),
        (0, good),
        (6, good + b"\0\0"),
        (7, _tensor_up(3, 7)),
    ]
    screening = screen_uplinks(3, uplinks, range(7), _tensor_decode(3), max_bytes=len(good))
    assert [(r.client, r.reason) for r in screening.rejected] == [
        (1, "non_finite"),
        (2, "wrong_round"),
        (3, "client_mismatch"),
        (4, "truncated"),
        (5, "corrupt"),
        (0, "duplicate"),
        (6, "oversize"),
        (7, "unknown_client"),
    ]
    [accepted] = screening.accepted
    assert accepted.client == 0 and torch.equal(accepted.value["w"], torch.ones(2, 3))
