"""Tensor messages: the payloads of the baseline methods (LoRA adapters, prompt encoders, full weights or
deltas), as bytes with a validating decoder. The scalar messages of FedKSeed live in `messages.py`.

Layout (little endian): header | table | values | crc32 of everything before it.

    header  = magic "FKTN", version u8, kind u8 (1 up, 2 down), wire dtype code u8, reserved u8 (0),
              round u32, client id u32 (uplinks; 0xFFFFFFFF in downlinks), tensor count u32,
              table length u32 (bytes)                                             -> 24 bytes
    table   = per tensor: name length u16, utf-8 name, ndim u8, ndim x dim u32
    values  = each tensor's values in table order, C order, in the wire dtype (4 or 2 bytes each)

Wire dtypes: float32 (code 0), float16 (1), bfloat16 (2). The encoder casts with torch's own cast (round
to nearest even) and refuses non-finite values, including values the cast overflows to inf; the decoder
returns float32 CPU tensors, so every party aggregates exactly the values that travelled.

Payloads can be a whole model (~500 MB), so the encoder holds at most one cast copy of the values besides
its output, and the decoder one copy of each tensor's slice and its float32 result.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from kit.federation.messages import DOWNLINK, NO_CLIENT, UPLINK, MessageError

MAGIC = b"FKTN"
VERSION = 1
WIRE_DTYPES: dict[str, tuple[int, torch.dtype]] = {
    "float32": (0, torch.float32),
    "float16": (1, torch.float16),
    "bfloat16": (2, torch.bfloat16),
}
_HEADER = struct.Struct("<4sBBBBIIII")
_CRC = struct.Struct("<I")
_NAME_LEN = struct.Struct("<H")
_FINITE_CHUNK = 1 << 22  # elements per isfinite() call: bounds the temporary bool mask to 4 MB

if sys.byteorder != "little":  # torch.frombuffer and Tensor.numpy() use the machine's byte order
    raise ImportError("kit.federation.tensors writes little-endian values and needs a little-endian machine")


@dataclass(frozen=True)
class TensorMessage:
    """A round's tensors: a client's result (uplink) or the server's model or update (downlink)."""

    round: int
    client_id: int  # NO_CLIENT in downlinks
    tensors: dict[str, torch.Tensor]  # float32 CPU tensors, in spec order


def _wire(wire_dtype: str) -> tuple[int, torch.dtype]:
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"unknown wire dtype {wire_dtype!r}; choose one of {', '.join(WIRE_DTYPES)}")
    return WIRE_DTYPES[wire_dtype]


def _kind_name(kind: int) -> str:
    if kind not in (UPLINK, DOWNLINK):
        raise ValueError(f"message kind must be UPLINK ({UPLINK}) or DOWNLINK ({DOWNLINK}), got {kind}")
    return "tensor uplink" if kind == UPLINK else "tensor downlink"


def _all_finite(t: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(part).all()) for part in t.reshape(-1).split(_FINITE_CHUNK))


def _table_entry(name: str, shape: Sequence[int]) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise MessageError(f"tensor name {name[:40]!r}... is {len(raw)} bytes, the format allows 65535")
    if len(shape) > 0xFF:
        raise MessageError(f"tensor {name!r} has {len(shape)} dimensions, the format allows 255")
    if any(not 0 <= d <= 0xFFFFFFFF for d in shape):
        raise MessageError(f"tensor {name!r} has shape {tuple(shape)}, dims must fit in u32")
    return _NAME_LEN.pack(len(raw)) + raw + struct.pack(f"<B{len(shape)}I", len(shape), *shape)


def payload_size(spec: Sequence[tuple[str, tuple[int, ...]]], wire_dtype: str) -> int:
    """Exact length in bytes of the message carrying tensors of `spec` (name, shape) in `wire_dtype`."""
    itemsize = _wire(wire_dtype)[1].itemsize
    size = _HEADER.size + _CRC.size
    for name, shape in spec:
        size += _NAME_LEN.size + len(name.encode("utf-8")) + 1 + 4 * len(shape)
        size += math.prod(shape) * itemsize
    return size


def encode_tensors(
    kind: int, rnd: int, client_id: int, tensors: Mapping[str, torch.Tensor], wire_dtype: str
) -> bytes:
    """Bytes of a tensor message; `tensors` may live on any device in any float dtype.

    Downlinks carry client id NO_CLIENT, uplinks a real one. Raises MessageError on a non-finite value
    (before or after the cast to the wire dtype), naming the tensor.
    """
    name = _kind_name(kind)
    code, dtype = _wire(wire_dtype)
    if (kind == DOWNLINK) != (client_id == NO_CLIENT):
        raise MessageError(f"{name} with client id {client_id}: downlinks, and only they, use NO_CLIENT")
    if not (0 <= rnd <= 0xFFFFFFFF and 0 <= client_id <= 0xFFFFFFFF):
        raise MessageError(f"{name} round {rnd} or client id {client_id} does not fit in u32")
    # 1) cast each tensor and check it; the chunks are views of the cast copies (or of the input itself
    #    when it already is a contiguous CPU tensor in the wire dtype), so nothing is copied twice.
    table, chunks = [], []
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise MessageError(f"tensor {key!r} has dtype {t.dtype}; tensor messages carry float tensors")
        cast = t.detach().to(device="cpu", dtype=dtype).contiguous()
        if not _all_finite(cast):
            if _all_finite(t.detach()):
                raise MessageError(
                    f"refusing to encode tensor {key!r}: its values overflow {wire_dtype} to inf "
                    f"(largest finite {torch.finfo(dtype).max:g}); send it in a wider wire dtype"
                )
            raise MessageError(f"refusing to encode tensor {key!r}: it holds NaN or infinite values")
        table.append(_table_entry(key, cast.shape))
        values = cast.view(torch.int16) if dtype == torch.bfloat16 else cast  # numpy has no bfloat16
        chunks.append(memoryview(values.numpy().reshape(-1)).cast("B"))
    table_bytes = b"".join(table)
    head = _HEADER.pack(MAGIC, VERSION, kind, code, 0, rnd, client_id, len(table), len(table_bytes))
    # 2) checksum incrementally, then join once: the output is the only full-size allocation here.
    crc = zlib.crc32(table_bytes, zlib.crc32(head))
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return b"".join([head, table_bytes, *chunks, _CRC.pack(crc)])


def _read_table(data: memoryview, count: int, name: str) -> list[tuple[str, tuple[int, ...]]]:
    entries, at = [], 0
    for i in range(count):
        if at + _NAME_LEN.size > len(data):
            raise MessageError(f"{name} table is truncated at entry {i} of {count}")
        (n,) = _NAME_LEN.unpack_from(data, at)
        at += _NAME_LEN.size
        if at + n + 1 > len(data):
            raise MessageError(f"{name} table is truncated at entry {i} of {count}")
        try:
            key = bytes(data[at : at + n]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MessageError(f"{name} table entry {i} has a name that is not utf-8") from e
        ndim = data[at + n]
        at += n + 1
        if at + 4 * ndim > len(data):
            raise MessageError(f"{name} table is truncated at tensor {key!r}")
        entries.append((key, struct.unpack_from(f"<{ndim}I", data, at)))
        at += 4 * ndim
    if at != len(data):
        raise MessageError(f"{name} table is {len(data)} bytes, its {count} entries take {at}")
    return entries


def _check_names(got: list[str], want: list[str], name: str) -> None:
    if got == want:
        return
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    if missing:
        raise MessageError(f"{name} lacks tensor {missing[0]!r} of the spec ({len(missing)} missing)")
    if unexpected:
        raise MessageError(f"{name} carries unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all)")
    if len(got) != len(want):
        raise MessageError(f"{name} carries {len(got)} tensors, the spec has {len(want)} (a name repeats)")
    i = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    raise MessageError(
        f"{name} order differs from the spec: tensor {got[i]!r} at position {i}, expected {want[i]!r}"
    )


def decode_tensors(
    data: bytes,
    kind: int,
    spec: Sequence[tuple[str, tuple[int, ...]]],
    wire_dtype: str,
    expected_round: int | None = None,
    expected_client: int | None = None,
) -> TensorMessage:
    """Validate and decode a tensor message against `spec` (name, shape in order); raises MessageError
    naming what is wrong. Every check runs before the result exists: nothing is half-decoded."""
    name = _kind_name(kind)
    code, dtype = _wire(wire_dtype)
    want_names = [k for k, _ in spec]
    if len(set(want_names)) != len(want_names):
        raise ValueError("spec names must be unique")
    # 1) envelope: length, checksum, header fields.
    if len(data) < _HEADER.size + _CRC.size:
        raise MessageError(f"{name} truncated: {len(data)} bytes is shorter than a header", "truncated")
    view = memoryview(data)
    (crc,) = _CRC.unpack_from(view, len(view) - _CRC.size)
    if zlib.crc32(view[: -_CRC.size]) != crc:
        if len(data) < (legal := payload_size(spec, wire_dtype)):
            raise MessageError(
                f"{name} truncated: {len(data)} bytes, the spec's message is {legal}", "truncated"
            )
        raise MessageError(f"{name} corrupted or truncated: checksum mismatch", "corrupt")
    magic, version, got_kind, got_code, reserved, rnd, client, count, table_len = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise MessageError(f"not a fedkseed tensor message (magic {magic!r})")
    if version != VERSION:
        raise MessageError(f"{name} format version {version}, this kit reads version {VERSION}")
    if got_kind != kind:
        raise MessageError(f"expected a {name}, got message kind {got_kind}")
    if got_code != code:
        got_dtype = next((k for k, (c, _) in WIRE_DTYPES.items() if c == got_code), f"code {got_code}")
        raise MessageError(f"{name} travels in wire dtype {got_dtype}, expected {wire_dtype}")
    if reserved != 0:
        raise MessageError(f"{name} reserved header byte is {reserved}, expected 0")
    if expected_round is not None and rnd != expected_round:
        raise MessageError(f"{name} is for round {rnd}, expected round {expected_round}", "wrong_round")
    if kind == DOWNLINK and client != NO_CLIENT:
        raise MessageError(f"{name} names client {client}; downlinks carry no client id")
    if expected_client is not None and client != expected_client:
        raise MessageError(
            f"{name} is from client {client}, expected client {expected_client}", "client_mismatch"
        )
    # 2) table against the spec, then the announced data length.
    body = view[_HEADER.size : -_CRC.size]
    if table_len > len(body):
        raise MessageError(f"{name} table length {table_len} exceeds the {len(body)} bytes after the header")
    entries = _read_table(body[:table_len], count, name)
    _check_names([k for k, _ in entries], want_names, name)
    for (key, shape), (_, want_shape) in zip(entries, spec, strict=True):
        if tuple(shape) != tuple(want_shape):
            raise MessageError(
                f"{name} tensor {key!r} has shape {tuple(shape)}, the spec expects {tuple(want_shape)}"
            )
    sizes = [math.prod(shape) * dtype.itemsize for _, shape in entries]
    values = body[table_len:]
    if len(values) != sum(sizes):
        raise MessageError(f"{name} tensor data is {len(values)} bytes, its table announces {sum(sizes)}")
    # 3) values: copy each slice into a writable buffer (no aliasing of `data`), widen to float32, check.
    tensors, at = {}, 0
    for (key, shape), size in zip(entries, sizes, strict=True):
        if size == 0:
            t = torch.empty(shape, dtype=torch.float32)
        else:
            raw = torch.frombuffer(bytearray(values[at : at + size]), dtype=dtype)
            t = raw.float().reshape(shape)
        if not _all_finite(t):
            raise MessageError(f"{name} tensor {key!r} holds NaN or infinite values", "non_finite")
        tensors[key] = t
        at += size
    return TensorMessage(rnd, client, tensors)
