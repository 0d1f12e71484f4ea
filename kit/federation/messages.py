"""Wire messages: the client's uplink and the server's downlink, as bytes with a validating decoder.

Layout (little endian): header | payload | crc32 of everything before it.

    header  = magic "FKSD", version u8, kind u8 (1 up, 2 down), encoding u8 (0 dense, 1 sparse, 2 signs),
              flags u8 (bit 0: probabilities follow), K u32, pool fingerprint 8 B, round u32,
              client id u32 (uplinks; 0xFFFFFFFF in downlinks), count u32 (scalars in the payload)
    dense   = K float32
    sparse  = count indices (u16 when K <= 65536, else u32, strictly ascending) + count float32
    signs   = ceil(count / 8) bytes, bit i (little-endian bit order) 1: +1, 0: -1; count K or 0 (no
              value: all zero), padding bits 0 (FeedSign's votes; only where the caller asks for it)
    probs   = K float32 (downlinks of FedKSeed-Pro only)

The encoder picks dense or sparse, whichever is smaller (signs only when asked). Scalars travel as
float32; the server aggregates exactly the values it decodes, so every party sees the same numbers.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"FKSD"
VERSION = 1
UPLINK, DOWNLINK = 1, 2
DENSE, SPARSE, SIGNS = 0, 1, 2
SCALARS = (DENSE, SPARSE)  # what a scalar payload may use; FeedSign's votes use (SIGNS,)
HAS_PROBS = 1
NO_CLIENT = 0xFFFFFFFF
_HEADER = struct.Struct("<4sBBBBI8sIII")
_CRC = struct.Struct("<I")


class MessageError(ValueError):
    """A message that cannot be trusted: the text says what is wrong with it, `reason` names the kind
    (one of `REASONS`) so a server can count rejections instead of aborting the round."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


# kinds of untrusted message, as counted by `kit.federation.screening` (metrics `fed/rejected_<reason>`)
REASONS = (
    "unknown_client",  # the sender was not sampled in this round
    "duplicate",  # a second message from a client already accepted this round (a replay)
    "oversize",  # longer than the largest legal message
    "truncated",  # shorter than its header announces (checksum failing)
    "corrupt",  # checksum mismatch
    "wrong_round",
    "wrong_pool",  # another K or seed pool
    "client_mismatch",  # the header names another client than the sender
    "non_finite",  # NaN or infinite values
    "out_of_bound",  # beyond what an honest client can send (kit.federation.bounds)
    "malformed",  # anything else a decoder refuses (magic, version, kind, layout, spec)
)


@dataclass(frozen=True)
class Uplink:
    """A client's round result: the per-seed sums of its scalar gradients (length K)."""

    round: int
    client_id: int
    scalars: np.ndarray  # float32, shape (K,)


@dataclass(frozen=True)
class Downlink:
    """The server's round result: aggregated scalars G (length K) and, for Pro, the next round's p."""

    round: int
    scalars: np.ndarray  # float32, shape (K,)
    probabilities: np.ndarray | None = None  # float32, shape (K,)


def max_uplink_size(k: int) -> int:
    """Bytes of the largest legal uplink for K seeds: the dense form (sparse is used only when smaller)."""
    return _HEADER.size + 4 * k + _CRC.size


def max_signs_size(k: int) -> int:
    """Bytes of a message of K sign bits."""
    return _HEADER.size + -(-k // 8) + _CRC.size


def _body_size(encoding: int, k: int, count: int) -> int | None:
    """Payload bytes an encoding takes for K values of which `count` travel (None: unknown encoding)."""
    if encoding == DENSE:
        return 4 * k
    if encoding == SPARSE:
        return count * (np.dtype(_index_dtype(k)).itemsize + 4)
    if encoding == SIGNS:
        return -(-count // 8)
    return None


def _announced_size(header: tuple) -> int | None:
    """Length of the whole message its header announces (None when the encoding is unknown)."""
    _, _, _, encoding, flags, k, _, _, _, count = header
    size = _body_size(encoding, k, count)
    if size is None:
        return None
    return _HEADER.size + size + (4 * k if flags & HAS_PROBS else 0) + _CRC.size


def _index_dtype(k: int) -> str:
    return "<u2" if k <= 65536 else "<u4"


def _payload(scalars: np.ndarray) -> tuple[int, int, bytes]:
    values = np.ascontiguousarray(scalars, dtype="<f4")
    nz = np.flatnonzero(values)
    dense = values.tobytes()
    sparse_size = nz.size * (np.dtype(_index_dtype(values.size)).itemsize + 4)
    if sparse_size < len(dense):
        return SPARSE, int(nz.size), nz.astype(_index_dtype(values.size)).tobytes() + values[nz].tobytes()
    return DENSE, int(values.size), dense


def _signs(values: np.ndarray) -> tuple[int, int, bytes]:
    if not np.any(values):
        return SIGNS, 0, b""
    if not np.all(np.abs(values) == 1):
        raise MessageError("refusing to encode signs that are not all +1 or -1")
    return SIGNS, int(values.size), np.packbits(values > 0, bitorder="little").tobytes()


def _encode(
    kind: int, rnd: int, client: int, scalars: np.ndarray, fingerprint: bytes, probs, signs: bool = False
) -> bytes:
    if not np.all(np.isfinite(scalars)):
        raise MessageError("refusing to encode non-finite scalars (a NaN loss reached the accumulator)")
    encoding, count, body = _signs(scalars) if signs else _payload(scalars)
    flags = HAS_PROBS if probs is not None else 0
    head = _HEADER.pack(MAGIC, VERSION, kind, encoding, flags, scalars.size, fingerprint, rnd, client, count)
    if probs is not None:
        body += np.ascontiguousarray(probs, dtype="<f4").tobytes()
    data = head + body
    return data + _CRC.pack(zlib.crc32(data))


def encode_uplink(msg: Uplink, fingerprint: bytes, signs: bool = False) -> bytes:
    """Bytes of an uplink for the pool with `fingerprint` (`signs`: values +-1 as one bit each)."""
    return _encode(UPLINK, msg.round, msg.client_id, msg.scalars, fingerprint, None, signs)


def encode_downlink(msg: Downlink, fingerprint: bytes, signs: bool = False) -> bytes:
    """Bytes of a downlink for the pool with `fingerprint` (`signs`: values +-1 as one bit each, or
    all zero: no value)."""
    return _encode(DOWNLINK, msg.round, NO_CLIENT, msg.scalars, fingerprint, msg.probabilities, signs)


def _decode(
    data: bytes, kind: int, k: int, fingerprint: bytes, expected_round: int | None, encodings=SCALARS
):
    name = "uplink" if kind == UPLINK else "downlink"
    if len(data) < _HEADER.size + _CRC.size:
        raise MessageError(f"{name} truncated: {len(data)} bytes is shorter than a header", "truncated")
    header = _HEADER.unpack_from(data)
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        announced = _announced_size(header)
        if announced is not None and len(data) < announced:
            raise MessageError(
                f"{name} truncated: {len(data)} bytes, its header announces {announced}", "truncated"
            )
        raise MessageError(f"{name} corrupted or truncated: checksum mismatch", "corrupt")
    magic, version, got_kind, encoding, flags, got_k, fp, rnd, client, count = header
    if magic != MAGIC:
        raise MessageError(f"not a fedkseed message (magic {magic!r})")
    if version != VERSION:
        raise MessageError(f"{name} format version {version}, this kit reads version {VERSION}")
    if got_kind != kind:
        raise MessageError(f"expected an {name}, got message kind {got_kind}")
    if got_k != k:
        raise MessageError(f"{name} carries K={got_k} scalars but this federation uses K={k}", "wrong_pool")
    if fp != fingerprint:
        raise MessageError(
            f"{name} was made for another seed pool (fingerprint {fp.hex()} != {fingerprint.hex()})",
            "wrong_pool",
        )
    if expected_round is not None and rnd != expected_round:
        raise MessageError(f"{name} is for round {rnd}, expected round {expected_round}", "wrong_round")
    body = memoryview(data)[_HEADER.size : -_CRC.size]
    probs_size = 4 * k if flags & HAS_PROBS else 0
    size = _body_size(encoding, k, count)
    if size is None or encoding not in encodings:
        raise MessageError(f"{name} has unknown encoding {encoding}")
    if len(body) != size + probs_size:
        raise MessageError(f"{name} payload is {len(body)} bytes, its header announces {size + probs_size}")
    scalars = np.zeros(k, dtype=np.float32)
    if encoding == SIGNS:
        if count not in (0, k):
            raise MessageError(f"{name} carries {count} sign bits, expected {k} or 0")
        bits = np.unpackbits(np.frombuffer(body[:size], dtype=np.uint8), bitorder="little")
        if np.any(bits[count:]):
            raise MessageError(f"{name} has nonzero padding bits after its {count} signs")
        if count:
            scalars[:] = np.where(bits[:count] == 1, 1.0, -1.0)
    elif encoding == DENSE:
        scalars[:] = np.frombuffer(body[:size], dtype="<f4")
    else:
        idx_bytes = count * np.dtype(_index_dtype(k)).itemsize
        idx = np.frombuffer(body[:idx_bytes], dtype=_index_dtype(k)).astype(np.int64)
        if count and (idx[-1] >= k or np.any(np.diff(idx) <= 0)):
            raise MessageError(f"{name} sparse indices are out of range or not strictly ascending")
        scalars[idx] = np.frombuffer(body[idx_bytes:size], dtype="<f4")
    if not np.all(np.isfinite(scalars)):
        raise MessageError(f"{name} holds NaN or infinite scalars", "non_finite")
    probs = None
    if probs_size:
        probs = np.frombuffer(body[size:], dtype="<f4").copy()
        if (
            not np.all(np.isfinite(probs))
            or np.any(probs < 0)
            or abs(float(probs.sum(dtype=np.float64)) - 1) > 1e-3
        ):
            raise MessageError(f"{name} probabilities are not a distribution over the K seeds")
    return rnd, client, scalars, probs


def decode_uplink(
    data: bytes, k: int, fingerprint: bytes, expected_round: int | None = None, encodings=SCALARS
) -> Uplink:
    """Validate and decode an uplink; raises MessageError naming what is wrong. `encodings`: the
    payload encodings the caller accepts (scalars: dense or sparse; FeedSign: signs)."""
    rnd, client, scalars, _ = _decode(data, UPLINK, k, fingerprint, expected_round, encodings)
    return Uplink(rnd, client, scalars)


def decode_downlink(
    data: bytes, k: int, fingerprint: bytes, expected_round: int | None = None, encodings=SCALARS
) -> Downlink:
    """Validate and decode a downlink; raises MessageError naming what is wrong."""
    rnd, _, scalars, probs = _decode(data, DOWNLINK, k, fingerprint, expected_round, encodings)
    return Downlink(rnd, scalars, probs)
