"""The typed messages between the strategy and a node: values as Flower records carry them, and back."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord

from kit.deploy.messages import EvalReply, NodeInfo, SyncReport, SyncRequest, TrainReply, TrainRequest

REPORT = SyncReport("replay", 3, 7, "ab" * 32)
MESSAGES = [
    SyncRequest(7, 5, "replay", (b"\x01\x02", b"", b"\xff")),
    TrainRequest(8, 41, 200),
    TrainReply(41, b"\x00payload", 12, 30.5, 199, 1, REPORT),
    EvalReply(10.25, REPORT),
    NodeInfo(1, 3, 50, 7, {"train": 2, "eval": 0}),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_survives_a_flower_record(msg):
    record = ConfigRecord(msg.values())  # Flower accepts the values (ints, floats, str, bytes, lists)
    assert type(msg).from_values(dict(record)) == msg


def test_a_message_missing_a_field_is_refused_naming_it():
    values = TrainRequest(8, 41, 200).values()
    del values["steps"]
    with pytest.raises(ValueError, match="message lacks 'steps'"):
        TrainRequest.from_values(values)
