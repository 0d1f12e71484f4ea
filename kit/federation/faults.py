"""Simulated faults of a round: sampled clients that drop out, stragglers that miss the deadline.

    model = FaultModel(dropout=0.3, straggler_prob=0.2, straggler_delay_s=60, deadline_s=30)
    model.round(federation_seed=42, server_round=3, clients=[1, 5, 9])
    # RoundFaults(arrived=[1, 9], dropped=[5], late=[], delays={1: 0.0, 5: 0.0, 9: 12.7})

A client's fate in a round is a pure function of (federation seed, round, client): the same on any
number of processes, on resume, and whoever else was sampled. Three uniform draws decide it:
u0 < dropout -> the client drops (never answers); u1 < straggler_prob -> it straggles, with a
simulated delay of -straggler_delay_s * log(1 - u2) seconds (exponential, mean straggler_delay_s),
else 0 s. A client whose delay exceeds `deadline_s` arrives late and is treated as missing. The draws
do not depend on the probabilities, so raising `dropout` only adds dropped clients.

The delay is simulated time: the Lightning simulation never sleeps and never trains a client that
drops or arrives late (its uplink would be discarded, so skipping it changes no number); a real
deployment (Flower) waits on the wire until the deadline instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_FAULT_STREAM = 0xFA17  # keeps these draws apart from client sampling and seed choices


@dataclass(frozen=True)
class RoundFaults:
    """Which of a round's sampled clients arrive in time, drop out, or arrive late (ascending ids)."""

    arrived: list[int]
    dropped: list[int]
    late: list[int]
    delays: dict[int, float]  # simulated seconds, every sampled client

    @property
    def missing(self) -> list[int]:
        """Clients whose uplink the server does not get this round."""
        return sorted(self.dropped + self.late)


@dataclass(frozen=True)
class FaultModel:
    """Dropout, stragglers and the per-round deadline (all off by default).

    Args:
        dropout: probability that a sampled client drops out of a round.
        straggler_prob: probability that a sampled client straggles.
        straggler_delay_s: mean simulated delay of a straggler, seconds (exponential).
        deadline_s: the server aggregates what arrived within this many seconds (None: waits for all).
    """

    dropout: float = 0.0
    straggler_prob: float = 0.0
    straggler_delay_s: float = 0.0
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.dropout <= 1:
            raise ValueError(f"--fed.dropout must be in [0, 1], got {self.dropout}")
        if not 0 <= self.straggler_prob <= 1:
            raise ValueError(f"--fed.straggler_prob must be in [0, 1], got {self.straggler_prob}")
        if not (math.isfinite(self.straggler_delay_s) and self.straggler_delay_s >= 0):
            raise ValueError(f"--fed.straggler_delay_s must be >= 0, got {self.straggler_delay_s}")
        if self.deadline_s is not None and not self.deadline_s >= 0:
            raise ValueError(f"--fed.deadline_s must be >= 0 or null (no deadline), got {self.deadline_s}")

    def client(self, federation_seed: int, server_round: int, client_id: int) -> tuple[bool, float]:
        """(drops out, simulated delay in seconds) of one client in one round."""
        rng = np.random.default_rng([federation_seed, server_round, client_id, _FAULT_STREAM])
        u_drop, u_straggle, u_delay = rng.random(3).tolist()
        delay = -self.straggler_delay_s * math.log1p(-u_delay) if u_straggle < self.straggler_prob else 0.0
        return u_drop < self.dropout, delay

    def round(self, federation_seed: int, server_round: int, clients: Sequence[int]) -> RoundFaults:
        """The fate of each of the round's sampled `clients`."""
        arrived, dropped, late, delays = [], [], [], {}
        for c in sorted(clients):
            drops, delays[c] = self.client(federation_seed, server_round, c)
            if drops:
                dropped.append(c)
            elif self.deadline_s is not None and delays[c] > self.deadline_s:
                late.append(c)
            else:
                arrived.append(c)
        return RoundFaults(arrived, dropped, late, delays)
