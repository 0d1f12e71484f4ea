"""Planning a round: which clients are sampled, which drop out or miss the deadline, how many local
steps each one that trains takes. A pure function of (seed, round, clients): every runtime and every
process plans the same round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kit.federation.faults import FaultModel, RoundFaults
from kit.federation.server import sample_clients


@dataclass(frozen=True)
class RoundPlan:
    """Round `round`: the sampled clients, their faults, and (client, local steps) of those that train."""

    round: int
    clients: tuple[int, ...]
    faults: RoundFaults
    steps: tuple[tuple[int, int], ...]

    @property
    def training(self) -> tuple[int, ...]:
        """The clients that train this round (arrived within the deadline), in arrival order."""
        return tuple(c for c, _ in self.steps)

    def steps_of(self, client: int) -> int:
        """Local steps of `client` this round (KeyError: it does not train)."""
        return dict(self.steps)[client]


def plan_round(
    seed: int,
    server_round: int,
    num_clients: int,
    fraction: float,
    faults: FaultModel,
    local_steps: int | Callable[[int], int],
) -> RoundPlan:
    """Sample round `server_round`'s clients, apply the fault model, give each trainer its steps.

    `local_steps`: tau for every client, or a function of the client id (per-client budgets)."""
    clients = sample_clients(seed, server_round, num_clients, fraction)
    round_faults = faults.round(seed, server_round, clients)
    steps_of = local_steps if callable(local_steps) else (lambda _c: local_steps)
    # clients that drop out or miss the deadline do not train: their uplink would be discarded
    steps = tuple((c, int(steps_of(c))) for c in round_faults.arrived)
    return RoundPlan(server_round, tuple(clients), round_faults, steps)
