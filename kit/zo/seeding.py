"""Deterministic integer mixing: one 64-bit generator seed per (seed, parameter, chunk)."""

from __future__ import annotations

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """One step of SplitMix64 (Steele et al.): a bijective, well-mixing 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def mix(*values: int) -> int:
    """Hash a tuple of non-negative integers to a 63-bit seed (order matters)."""
    h = 0
    for v in values:
        h = splitmix64(h ^ (v & MASK64))
    return h >> 1
