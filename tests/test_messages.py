import struct
import zlib

import numpy as np
import pytest

from kit.federation.messages import (
    Downlink,
    MessageError,
    Uplink,
    decode_downlink,
    decode_uplink,
    encode_downlink,
    encode_uplink,
)
from kit.federation.seeds import SeedPool

POOL = SeedPool(4096, federation_seed=42)
HEADER = 4 + 4 + 4 + 8 + 12
CRC = 4


def _sparse(k=4096, touched=(3, 17, 4000), seed=0):
    v = np.zeros(k, dtype=np.float32)
    v[list(touched)] = np.random.default_rng(seed).normal(size=len(touched))
    return v


def _reseal(data: bytes) -> bytes:
    body = data[:-CRC]
    return body + struct.pack("<I", zlib.crc32(body))


def test_seed_pool_is_derived_from_the_federation_seed():
    assert SeedPool(64, 1).seeds == SeedPool(64, 1).seeds
    assert SeedPool(64, 1).fingerprint != SeedPool(64, 2).fingerprint
    assert len(set(POOL.seeds)) == 4096 and all(1 <= s < 10**11 for s in POOL.seeds)


def test_sparse_uplink_round_trips_in_six_bytes_per_touched_seed():
    up = Uplink(round=3, client_id=7, scalars=_sparse())
    data = encode_uplink(up, POOL.fingerprint)
    assert len(data) == HEADER + CRC + 3 * (2 + 4)
    back = decode_uplink(data, 4096, POOL.fingerprint, expected_round=3)
    assert back.client_id == 7 and np.array_equal(back.scalars, up.scalars)


def test_dense_uplink_is_chosen_when_smaller_and_stays_under_18_kilobytes():
    dense = np.random.default_rng(1).normal(size=4096).astype(np.float32)
    data = encode_uplink(Uplink(1, 0, dense), POOL.fingerprint)
    assert len(data) == HEADER + CRC + 4 * 4096 < 18 * 1024
    assert np.array_equal(decode_uplink(data, 4096, POOL.fingerprint).scalars, dense)


def test_downlink_carries_probabilities():
    probs = np.full(4096, 1 / 4096, dtype=np.float32)
    data = encode_downlink(Downlink(5, _sparse(), probs), POOL.fingerprint)
    back = decode_downlink(data, 4096, POOL.fingerprint, expected_round=5)
    assert np.array_equal(back.probabilities, probs) and back.round == 5


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d[:-7], "checksum|truncated"),
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:40] + bytes([d[40] ^ 0xFF]) + d[41:], "checksum"),
        (lambda d: _reseal(b"XXXX" + d[4:-CRC] + d[-CRC:]), "magic"),
        (lambda d: _reseal(d[:4] + bytes([9]) + d[5:]), "version"),
        (lambda d: _reseal(d[:5] + bytes([2]) + d[6:]), "expected an uplink"),
    ],
)
def test_malformed_uplinks_are_rejected(mutate, match):
    data = encode_uplink(Uplink(2, 1, _sparse()), POOL.fingerprint)
    with pytest.raises(MessageError, match=match):
        decode_uplink(mutate(data), 4096, POOL.fingerprint)


def test_wrong_k_pool_or_round_is_rejected():
    data = encode_uplink(Uplink(2, 1, _sparse()), POOL.fingerprint)
    with pytest.raises(MessageError, match="K=4096 .* K=1024"):
        decode_uplink(data, 1024, POOL.fingerprint)
    with pytest.raises(MessageError, match="another seed pool"):
        decode_uplink(data, 4096, SeedPool(4096, 43).fingerprint)
    with pytest.raises(MessageError, match="round 2, expected round 3"):
        decode_uplink(data, 4096, POOL.fingerprint, expected_round=3)


def test_nan_scalars_are_rejected_on_both_ends():
    bad = _sparse()
    bad[17] = np.nan
    with pytest.raises(MessageError, match="non-finite"):
        encode_uplink(Uplink(1, 0, bad), POOL.fingerprint)
    data = bytearray(encode_uplink(Uplink(1, 0, _sparse()), POOL.fingerprint))
    values_at = HEADER + 3 * 2  # after the three u16 indices
    data[values_at + 4 : values_at + 8] = np.float32(np.inf).tobytes()
    with pytest.raises(MessageError, match="NaN or infinite"):
        decode_uplink(_reseal(bytes(data)), 4096, POOL.fingerprint)


def test_unsorted_or_out_of_range_sparse_indices_are_rejected():
    data = bytearray(encode_uplink(Uplink(1, 0, _sparse()), POOL.fingerprint))
    data[HEADER : HEADER + 2] = np.uint16(4095).tobytes()  # first index now above the second
    with pytest.raises(MessageError, match="ascending"):
        decode_uplink(_reseal(bytes(data)), 4096, POOL.fingerprint)


def test_probabilities_must_form_a_distribution():
    probs = np.full(4096, 1 / 4096, dtype=np.float32)
    data = bytearray(encode_downlink(Downlink(1, _sparse(), probs), POOL.fingerprint))
    data[-CRC - 4 : -CRC] = np.float32(0.5).tobytes()
    with pytest.raises(MessageError, match="distribution"):
        decode_downlink(_reseal(bytes(data)), 4096, POOL.fingerprint)
