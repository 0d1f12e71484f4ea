"""Validation of a seed file's JSON header: every field's type and range, the header's size and depth.

    header = parse_header(raw_bytes, "run.seeds")   # a dict of checked fields, or SeedFileError

Seed files are exchanged between people, so a header is untrusted even with an intact sha256 (whoever
crafted it recomputed the hash). `FIELDS` is the table of field -> (required, check): a new header
field is one row. Unknown fields are tolerated (a newer kit's optional additions) if they are plain
JSON scalars; they are not used.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

MAX_HEADER_BYTES = 64 * 1024  # a real header is ~400 bytes
MAX_DEPTH = 3  # header object > z object > its scalars
MAX_NUM_SEEDS = 1 << 24  # K; a round decodes to K float32, so K bounds the decoder's memory
MAX_ROUNDS = 1 << 24
METHODS = ("fedkseed", "fedkseed-pro")
MASTER_DTYPES = ("float32", "float16", "bfloat16")
_SHA256 = re.compile(r"[0-9a-f]{64}")

Check = Callable[[Any], str | None]  # a field's value -> None when valid, else what is wrong


def _integer(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {v!r:.40}"
        return None if lo <= v <= hi else f"must be in [{lo}, {hi}], got {v}"

    return check


def _real(lo: float, lo_open: bool) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"must be a number, got {v!r:.40}"
        if not math.isfinite(v):
            return f"must be finite, got {v}"
        ok = v > lo if lo_open else v >= lo
        return None if ok else f"must be {'>' if lo_open else '>='} {lo}, got {v}"

    return check


def _text(max_len: int = 1024) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not v:
            return f"must be a non-empty string, got {v!r:.40}"
        return None if len(v) <= max_len else f"must be at most {max_len} characters, got {len(v)}"

    return check


def _choice(options: tuple[str, ...]) -> Check:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}, got {v!r:.40}"

    return check


def _sha256(v: Any) -> str | None:
    ok = isinstance(v, str) and _SHA256.fullmatch(v)
    return None if ok else f"must be 64 lowercase hex digits (a sha256), got {v!r:.40}"


Z_FIELDS: dict[str, Check] = {
    "family": _text(64),
    "version": _text(64),
    "chunk_size": _integer(1, 1 << 40),
    "distribution": _choice(("gaussian", "rademacher")),
}


def _z(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"must be an object (family, version, chunk_size, distribution), got {v!r:.40}"
    for key, check in Z_FIELDS.items():
        if key not in v:
            return f"lacks {key}"
        problem = check(v[key])
        if problem:
            return f"{key} {problem}"
    return None


# field -> (required, check); `rounds` is the number of round records that follow the header
FIELDS: dict[str, tuple[bool, Check]] = {
    "model": (True, _text()),
    "theta0_sha256": (True, _sha256),
    "z": (True, _z),
    "num_seeds": (True, _integer(1, MAX_NUM_SEEDS)),
    "federation_seed": (True, _integer(0, (1 << 64) - 1)),
    "lr": (True, _real(0.0, lo_open=True)),
    "weight_decay": (True, _real(0.0, lo_open=False)),
    "method": (True, _choice(METHODS)),
    "rounds": (True, _integer(0, MAX_ROUNDS)),
    "global_weights_sha256": (True, _sha256),
    "master_dtype": (False, _choice(MASTER_DTYPES)),
    "local_steps": (False, _integer(1, 1 << 31)),  # tau, for the rounds' weight decay
}


def json_depth(raw: str) -> int:
    """The deepest nesting of objects/arrays in JSON text (brackets inside strings ignored), without
    parsing it: Python's json parser recurses, so a 100k-deep header would raise RecursionError."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


class HeaderError(ValueError):
    """What is wrong with a header (without the file's name and the fix, which the caller adds)."""


def parse_header(raw: bytes) -> dict:
    """The header's fields, every one checked; raises HeaderError naming the field and the problem."""
    if len(raw) > MAX_HEADER_BYTES:
        raise HeaderError(f"header is {len(raw):,} bytes, at most {MAX_HEADER_BYTES:,} are allowed")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise HeaderError(f"header is not UTF-8 ({exc})") from None
    if json_depth(text) > MAX_DEPTH:
        raise HeaderError(f"header nests deeper than {MAX_DEPTH} levels")
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HeaderError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise HeaderError(f"header must be a JSON object, got {type(header).__name__}")
    for key, (required, check) in FIELDS.items():
        if key not in header:
            if required:
                raise HeaderError(f"header field {key} is missing")
            continue
        problem = check(header[key])
        if problem:
            raise HeaderError(f"header field {key} {problem}")
    for key, value in header.items():
        if key in FIELDS:
            continue
        scalar = (
            value is None
            or isinstance(value, bool | int | str)
            or (isinstance(value, float) and math.isfinite(value))
        )
        if not scalar or (isinstance(value, str) and len(value) > 1024):
            raise HeaderError(f"unknown header field {key:.40} holds {value!r:.40} (not a plain value)")
    return header
