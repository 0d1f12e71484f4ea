"""Bytes of a Flower message on the wire: every object of its tree as Flower serialises it."""

from __future__ import annotations

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def flower_bytes(message: Message) -> int:
    """Bytes Flower moves for `message`: the deflated message, its RecordDict and every record/array."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
