"""One colour per method in every comparison plot, so that a method looks the same in every figure."""

from __future__ import annotations

from kit.methods import METHODS

# matplotlib's default cycle (tab10), then black: one entry per method of the registry
PALETTE = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "k")
OTHER = "m"  # magenta: a name outside the registry


def method_color(method: str) -> str:
    """The matplotlib colour of `method`: fixed by its place in the method registry."""
    return PALETTE[METHODS.index(method)] if method in METHODS else OTHER
