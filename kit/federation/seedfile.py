"""A FedKSeed fine-tune as a seed file: θ₀'s identity, z's definition and every round's scalars.

    data = encode(SeedFile(...))            # a few KB: the whole fine-tune, no weights
    sf = decode(data, "run.seeds")          # validated: truncated or corrupted files are refused

Layout (little-endian):
    magic  b"FKSEEDS\\0"                          8 bytes
    format version                               u16
    header length H                              u32
    header                                       H bytes of UTF-8 JSON (sorted keys): model, theta0_sha256,
                                                 z, num_seeds, federation_seed, lr, weight_decay, method,
                                                 rounds, global_weights_sha256; local_steps (tau, for
                                                 the round's weight decay; absent in older files);
                                                 master_dtype (float32, float16 or bfloat16; absent
                                                 in files written before it: float32)
    per round: n (u32), n seed indices (u32, strictly ascending, < K), n scalars G_j (f32, finite, != 0)
    sha256 of all the bytes above                32 bytes
Only the seeds a round touched are stored: a round costs 4 + 8 n bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

import numpy as np

from kit.federation.seedfile_header import HeaderError, parse_header
from kit.federation.sync import round_decay

MAGIC = b"FKSEEDS\0"
FORMAT_VERSION = 1
HEADER_KEYS = (
    "model",
    "theta0_sha256",
    "z",
    "num_seeds",
    "federation_seed",
    "lr",
    "weight_decay",
    "method",
    "rounds",
    "global_weights_sha256",
)
OPTIONAL_HEADER = {"master_dtype": "float32"}  # key: the value of files written before the key
MASTER_DTYPES = ("float32", "float16", "bfloat16")


class SeedFileError(ValueError):
    """A seed file that cannot be trusted (truncated, corrupted, another format version, a header
    field of the wrong type or range)."""


@dataclass(frozen=True)
class SeedFile:
    """The content of a seed file; `downlinks` holds each round's dense G (float32, length K)."""

    model: str
    theta0_sha256: str
    z: dict
    num_seeds: int
    federation_seed: int
    lr: float
    weight_decay: float
    method: str
    global_weights_sha256: str
    downlinks: list[np.ndarray] = field(repr=False)
    local_steps: int | None = None  # tau: with lr and weight_decay, the decay of a round's update

    def round_decay(self) -> float:
        """The fraction of the matrices each round's update removes (`kit.federation.sync.round_decay`)."""
        if not self.weight_decay:
            return 0.0
        if self.local_steps is None:
            raise SeedFileError(
                "this seed file has weight decay but records no local_steps (made by an older kit): "
                "export it again with `fedkseed export --run DIR --out FILE.seeds`"
            )
        return round_decay(self.lr, self.weight_decay, self.local_steps)

    master_dtype: str = "float32"  # the dtype the weights were trained and are rebuilt in

    def header(self) -> dict:
        return {
            "model": self.model,
            "theta0_sha256": self.theta0_sha256,
            "z": dict(self.z),
            "num_seeds": int(self.num_seeds),
            "federation_seed": int(self.federation_seed),
            "lr": float(self.lr),
            "weight_decay": float(self.weight_decay),
            "method": self.method,
            "rounds": len(self.downlinks),
            "global_weights_sha256": self.global_weights_sha256,
            **({"local_steps": int(self.local_steps)} if self.local_steps is not None else {}),
            "master_dtype": self.master_dtype,
        }


def encode(sf: SeedFile) -> bytes:
    """The seed file's bytes (header, touched seeds of every round, sha256)."""
    header = json.dumps(sf.header(), sort_keys=True).encode()
    parts = [MAGIC, struct.pack("<HI", FORMAT_VERSION, len(header)), header]
    for g in sf.downlinks:
        g = np.asarray(g, dtype=np.float32)
        if g.shape != (sf.num_seeds,):
            raise ValueError(f"a round's G has shape {g.shape}, expected ({sf.num_seeds},)")
        idx = np.flatnonzero(g)
        parts += [struct.pack("<I", idx.size), idx.astype("<u4").tobytes(), g[idx].astype("<f4").tobytes()]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, source: str = "seed file") -> SeedFile:
    """Parse and validate a seed file's bytes; `source` names it in errors."""
    fix = "export it again with `fedkseed export --run DIR --out FILE.seeds`"
    if len(data) < len(MAGIC) + 6 + 32 or data[: len(MAGIC)] != MAGIC:
        raise SeedFileError(f"{source} is not a fedkseed seed file (no FKSEEDS header): {fix}")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise SeedFileError(f"{source} is truncated or corrupted (checksum mismatch): {fix}")
    version, hlen = struct.unpack_from("<HI", body, len(MAGIC))
    if version != FORMAT_VERSION:
        raise SeedFileError(f"{source} is seed-file format {version}; this kit reads {FORMAT_VERSION}: {fix}")
    pos = len(MAGIC) + 6
    if pos + hlen > len(body):
        raise SeedFileError(f"{source}: header length {hlen} runs past the end of the file: {fix}")
    try:
        header = parse_header(body[pos : pos + hlen])
    except HeaderError as exc:
        raise SeedFileError(f"{source}: {exc}: {fix}") from None
    pos += hlen
    k = header["num_seeds"]
    if 4 * header["rounds"] > len(body) - pos:
        raise SeedFileError(f"{source}: header field rounds ({header['rounds']}) exceeds what the file holds")
    downlinks = []
    for r in range(int(header["rounds"])):
        if pos + 4 > len(body):
            raise SeedFileError(f"{source} ends in round {r + 1} of {header['rounds']}: {fix}")
        (n,) = struct.unpack_from("<I", body, pos)
        pos += 4
        if n > k or pos + 8 * n > len(body):
            raise SeedFileError(f"{source}: round {r + 1} claims {n} seeds (K = {k}): {fix}")
        idx = np.frombuffer(body, "<u4", n, pos).astype(np.int64)
        vals = np.frombuffer(body, "<f4", n, pos + 4 * n).astype(np.float32)
        pos += 8 * n
        if n and (idx[-1] >= k or np.any(np.diff(idx) <= 0)):
            raise SeedFileError(f"{source}: round {r + 1}'s seed indices are not ascending below K = {k}")
        if not np.all(np.isfinite(vals)) or np.any(vals == 0):
            raise SeedFileError(f"{source}: round {r + 1} holds a zero or non-finite scalar")
        g = np.zeros(k, dtype=np.float32)
        g[idx] = vals
        downlinks.append(g)
    if pos != len(body):
        raise SeedFileError(f"{source} has {len(body) - pos} bytes after its last round: {fix}")
    fields = {key: header[key] for key in HEADER_KEYS if key != "rounds"}
    optional = {key: header.get(key, default) for key, default in OPTIONAL_HEADER.items()}
    if optional["master_dtype"] not in MASTER_DTYPES:
        raise SeedFileError(
            f"{source}'s header names master_dtype {optional['master_dtype']!r}, not one of "
            f"{', '.join(MASTER_DTYPES)}: {fix}"
        )
    return SeedFile(**fields, downlinks=downlinks, local_steps=header.get("local_steps"), **optional)
