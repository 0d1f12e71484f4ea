"""Secure aggregation by pairwise masks (Bonawitz et al. 2017): the server learns the sum of the
clients' vectors and nothing else of them. The primitives; the protocol's messages: kit/deploy/secagg.py.

Each client encodes its vector in fixed point in the ring Z_{2^64} (`encode`: round(x * 2^FRAC_BITS)),
adds, for every other client of the round, a mask drawn from the secret it shares with that client by
ECDH (Flower's key primitives): +mask towards a larger id, -mask towards a smaller one. In the sum over
all of them every mask appears once with each sign and cancels, so `decode(sum_masked(...))` is the
sum of the encodings; a single masked vector is uniform in the ring to anyone without its secrets.

    private, public = key_pair()                                 # per client and round
    masked = mask(encode(x), me, {peer: shared_secret(private, their_public)}, rnd)
    total = decode(sum_masked([masked_a, masked_b, ...]))        # = sum of x, up to the quantization

Quantization: each encoded value is within 2^-(FRAC_BITS+1) = 1.2e-10 of its float, so a sum of n
vectors is within n * 2^-(FRAC_BITS+1) of the exact sum; values must stay below 2^(63-FRAC_BITS) = 2^31
in magnitude (the sum too), else `encode` refuses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

FRAC_BITS = 32  # fixed point: 2^-32 resolution
LIMIT = 2.0 ** (63 - FRAC_BITS)  # |value| and |sum| bound (2^31)
QUANTUM = 2.0**-FRAC_BITS


def encode(x: np.ndarray) -> np.ndarray:
    """`x` in fixed point in Z_{2^64} (uint64); ValueError when a value is beyond LIMIT or not finite."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.abs(x) < LIMIT):
        raise ValueError(
            f"secure aggregation encodes values below {LIMIT:g} in magnitude, got {np.abs(x).max()}"
        )
    return np.rint(x * 2.0**FRAC_BITS).astype(np.int64).view(np.uint64)


def decode(q: np.ndarray) -> np.ndarray:
    """The float64 values of ring elements (two's complement: the upper half is negative)."""
    return np.asarray(q, dtype=np.uint64).view(np.int64).astype(np.float64) * QUANTUM


def key_pair() -> tuple[bytes, bytes]:
    """A fresh (private, public) key pair, PEM bytes (Flower's SECP384R1 primitives)."""
    private, public = generate_key_pairs()
    return private_key_to_bytes(private), public_key_to_bytes(public)


def shared_secret(private: bytes, peer_public: bytes) -> bytes:
    """The secret two clients share (ECDH + HKDF-SHA256), from one's private and the other's public key."""
    return generate_shared_key(bytes_to_private_key(private), bytes_to_public_key(peer_public))


def _stream(secret: bytes, server_round: int, size: int, tag: bytes = b"pair") -> np.ndarray:
    """`size` uint64 words of SHAKE-256 over the secret, a tag and the round (fresh every round)."""
    seed = secret + b"fedkseed-secagg-" + tag + server_round.to_bytes(8, "little")
    data = hashlib.shake_256(seed).digest(8 * size)
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)


def mask(
    q: np.ndarray, me: int, secrets: Mapping[int, bytes], server_round: int, seed: bytes | None = None
) -> np.ndarray:
    """`q` (encoded) plus the pairwise masks with every peer in `secrets` (peer id -> shared secret)
    and, with `seed`, the client's own mask (uint64 arithmetic wraps: the ring Z_{2^64})."""
    out = np.array(q, dtype=np.uint64)
    for peer, secret in secrets.items():
        if peer != me:
            out += pair_mask(me, peer, secret, server_round, len(out))
    if seed is not None:
        out += self_mask(seed, server_round, len(out))
    return out


def pair_mask(me: int, peer: int, secret: bytes, server_round: int, size: int) -> np.ndarray:
    """The mask `me` adds for `peer` (its negative when me > peer), from their shared secret."""
    m = _stream(secret, server_round, size)
    return m if me < peer else np.zeros(size, dtype=np.uint64) - m


def self_mask(seed: bytes, server_round: int, size: int) -> np.ndarray:
    """A client's own mask (the double mask of Bonawitz et al.), from its secret seed."""
    return _stream(seed, server_round, size, b"self")


def shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """Shamir shares of `secret`: any `threshold` of the `num` rebuild it (Flower's implementation)."""
    return create_shares(secret, threshold, num)


def rebuild(parts: Sequence[bytes]) -> bytes:
    """The secret from at least its threshold of shares."""
    return combine_shares(list(parts))


def seal(key: bytes, plaintext: bytes) -> bytes:
    """Authenticated encryption under a shared secret (Fernet: AES-128-CBC + HMAC-SHA256)."""
    return encrypt(key, plaintext)


def unseal(key: bytes, ciphertext: bytes) -> bytes:
    return decrypt(key, ciphertext)


def sum_masked(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The ring sum of masked vectors (the masks cancel when every masked client is in it)."""
    total = np.zeros(len(vectors[0]), dtype=np.uint64)
    for v in vectors:
        total += np.asarray(v, dtype=np.uint64)
    return total


def to_bytes(q: np.ndarray) -> bytes:
    return np.asarray(q, dtype="<u8").tobytes()


def from_bytes(data: bytes, size: int) -> np.ndarray:
    """A masked vector of `size` words from its bytes; ValueError on another length."""
    if len(data) != 8 * size:
        raise ValueError(f"masked vector of {len(data)} bytes, expected {8 * size}")
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)
