"""What a node needs to bring its replica from round `have` to round `target`: a typed message.

The method decides (`Method.replay_cost`): FedKSeed's node replays the missed downlinks, or
downloads the global state when the catch-up cost model finds that cheaper
(`kit.federation.catchup`); every tensor-payload method's node downloads the global state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kit.federation.catchup import NONE, WEIGHTS, plan_catchup
from kit.methods.base import Method


@dataclass(frozen=True)
class CatchUpCosts:
    """The catch-up cost model's settings (`kit.federation.catchup.plan_catchup`)."""

    replay_rate: float = 5e8
    bandwidth: float = 12.5e6
    merged_after: int = 0


@dataclass(frozen=True)
class SyncPlan:
    """Rounds first..target's downlinks (encoded) and, for a download, the global state of `target`."""

    target: int
    first: int
    kind: str  # "none" | "replay" | "merged" | "weights"
    downlinks: tuple[bytes, ...] = ()
    weights: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    @property
    def payload_bytes(self) -> int:
        """The kit's payload of this sync: downlinks plus float32 weights."""
        return sum(len(d) for d in self.downlinks) + sum(w.nbytes for w in self.weights or ())


def plan_sync(method: Method, have: int, target: int, costs: CatchUpCosts) -> SyncPlan:
    """What a replica at round `have` needs to reach round `target` (the server's method state)."""
    have = min(have, target)
    cost = method.replay_cost(have + 1, target)
    weights = None
    if cost is None:  # a tensor-payload method: its node downloads the global state
        kind, first, downlinks = (WEIGHTS if have < target else NONE), target + 1, ()
    else:
        per_round, union = cost
        num_params = sum(p.numel() for p in method.global_params())
        merged_after = costs.merged_after if union is not None else 0  # None: not mergeable
        rate, bandwidth = costs.replay_rate, costs.bandwidth
        plan = plan_catchup(per_round, union or 0, num_params, rate, bandwidth, merged_after)
        kind = plan.kind
        # the target round's downlink always travels: it carries the next round's client state
        first = max(target if kind == WEIGHTS else min(have + 1, target), 1)
        downlinks = tuple(method.downlink(r) for r in range(first, target + 1))
    if kind == WEIGHTS:
        weights = tuple(p.detach().cpu().numpy().copy() for p in method.global_params())
    return SyncPlan(target, first, kind, downlinks, weights)
