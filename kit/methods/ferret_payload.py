"""Ferret's wire format: per block, the chosen seed indices and their coefficients, with a validating decoder.

Layout (little endian): header | counts | indices | values | crc32 of everything before it.

    header  = magic "FRRT", version u8, kind u8 (1 up, 2 down), reserved u16 (0), K u32, blocks B u32,
              total u32 (coefficients in the message), layout fingerprint 8 B, round u32,
              client id u32 (uplinks; 0xFFFFFFFF in downlinks)
    counts  = B u16: coefficients per block (uplinks 2..K: the authors' floor of two seeds; downlinks 0..K)
    indices = total u16: seed indices, strictly ascending within each block, < K
    values  = total float32: the coefficients, in the same order

A client sends only the seeds it chose (allen4747/Ferret sends the K x B matrix with zeros for the rest); the
server's downlink is the weighted sum over clients, on the union of their seeds. The fingerprint names the
seed pool and the block layout, so a message of another K, pool or model is refused as `wrong_pool`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kit.federation.messages import DOWNLINK, NO_CLIENT, UPLINK, MessageError

MAGIC = b"FRRT"
VERSION = 1
MAX_K = 0xFFFF  # indices and counts travel as u16
MIN_UPLINK_SEEDS = 2  # allen4747/Ferret optimizers/ferret_optimizer.py project_update: max(..., 2)
_HEADER = struct.Struct("<4sBBHIII8sII")
_CRC = struct.Struct("<I")
_KINDS = {UPLINK: "Ferret uplink", DOWNLINK: "Ferret downlink"}


@dataclass(frozen=True)
class Coefficients:
    """One message: per block b, `indices[b]` (ascending seed indices) and `values[b]` (float32)."""

    round: int
    client_id: int  # NO_CLIENT in downlinks
    indices: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.values)


def message_size(counts: Sequence[int]) -> int:
    """Bytes of a message with `counts` coefficients per block."""
    return _HEADER.size + 2 * len(counts) + 6 * sum(counts) + _CRC.size


def max_message_size(k: int, blocks: int) -> int:
    """Bytes of the largest legal message: every block carries all K seeds."""
    return message_size([k] * blocks)


def encode(kind: int, msg: Coefficients, k: int, fingerprint: bytes) -> bytes:
    """The bytes of `msg` (an uplink or a downlink) for K seeds and the layout `fingerprint`."""
    for idx, val in zip(msg.indices, msg.values, strict=True):
        if len(idx) != len(val) or len(idx) > k or (len(idx) and (idx[0] < 0 or idx[-1] >= k)):
            raise ValueError(f"a block's indices must be ascending seed indices below K={k}")
        if not np.all(np.isfinite(val)):
            raise MessageError("refusing to encode non-finite Ferret coefficients (the local update is NaN)")
    counts = np.array([len(v) for v in msg.values], dtype="<u2")
    indices = np.concatenate([np.asarray(i, dtype="<u2") for i in msg.indices] or [np.zeros(0, "<u2")])
    values = np.concatenate([np.asarray(v, dtype="<f4") for v in msg.values] or [np.zeros(0, "<f4")])
    head = _HEADER.pack(
        MAGIC, VERSION, kind, 0, k, len(msg.values), msg.total, fingerprint, msg.round, msg.client_id
    )
    data = head + counts.tobytes() + indices.tobytes() + values.tobytes()
    return data + _CRC.pack(zlib.crc32(data))


def decode(
    data: bytes, kind: int, k: int, blocks: int, fingerprint: bytes, expected_round: int | None = None
) -> Coefficients:
    """Validate and decode a message of `kind`; raises `MessageError` naming what is wrong and its reason."""
    name = _KINDS[kind]
    # 1) envelope: length against the header's announcement, then the checksum
    if len(data) < _HEADER.size + _CRC.size:
        raise MessageError(f"{name} truncated: {len(data)} bytes is shorter than a header", "truncated")
    magic, version, got_kind, reserved, got_k, got_blocks, total, fp, rnd, client = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MessageError(f"not a Ferret message (magic {magic!r})")
    if version != VERSION:
        raise MessageError(f"{name} format version {version}, this kit reads version {VERSION}")
    if got_kind != kind:
        raise MessageError(f"expected a {name}, got message kind {got_kind}")
    announced = _HEADER.size + 2 * got_blocks + 6 * total + _CRC.size
    if len(data) < announced:
        raise MessageError(
            f"{name} truncated: {len(data)} bytes, its header announces {announced}", "truncated"
        )
    if len(data) > announced:
        raise MessageError(f"{name} is {len(data)} bytes, longer than the {announced} its header announces")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(memoryview(data)[: -_CRC.size]) != crc:
        raise MessageError(f"{name} corrupted: checksum mismatch", "corrupt")
    # 2) header fields against this run
    if reserved != 0:
        raise MessageError(f"{name} reserved header field is {reserved}, expected 0")
    if (got_k, got_blocks, fp) != (k, blocks, fingerprint):
        raise MessageError(
            f"{name} is for K={got_k} over {got_blocks} blocks (another seed pool or model), expected "
            f"K={k} over {blocks}",
            "wrong_pool",
        )
    if expected_round is not None and rnd != expected_round:
        raise MessageError(f"{name} is for round {rnd}, expected round {expected_round}", "wrong_round")
    if (kind == DOWNLINK) != (client == NO_CLIENT):
        raise MessageError(f"{name} names client {client}: only uplinks carry a client id")
    # 3) the body: counts, ascending indices per block, finite values
    at = _HEADER.size
    counts = np.frombuffer(data, dtype="<u2", count=blocks, offset=at).astype(np.int64)
    at += 2 * blocks
    low = MIN_UPLINK_SEEDS if kind == UPLINK else 0
    if int(counts.sum()) != total or np.any(counts > k) or np.any(counts < low):
        raise MessageError(f"{name} block counts must each be in [{low}, {k}] and sum to {total}")
    flat_idx = np.frombuffer(data, dtype="<u2", count=total, offset=at).astype(np.int64)
    flat_val = np.frombuffer(data, dtype="<f4", count=total, offset=at + 2 * total).copy()
    bounds = np.concatenate([[0], np.cumsum(counts)])
    indices = tuple(flat_idx[bounds[b] : bounds[b + 1]] for b in range(blocks))
    for b, idx in enumerate(indices):
        if len(idx) and (idx[-1] >= k or np.any(np.diff(idx) <= 0)):
            raise MessageError(f"{name} block {b}: seed indices must be strictly ascending and below K={k}")
    if not np.all(np.isfinite(flat_val)):
        raise MessageError(f"{name} holds non-finite coefficients", "non_finite")
    values = tuple(flat_val[bounds[b] : bounds[b + 1]] for b in range(blocks))
    return Coefficients(rnd, client, indices, values)
