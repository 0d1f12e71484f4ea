"""How a client that missed rounds catches up: exact replay, merged replay or a weights download.

    plan_catchup(touched_per_round=[2000, 1990], union_touched=3500, num_params=134_515_008)

A replay pass (one seed's z over every weight) and a download (4 bytes per weight) both scale with
the parameter count, so the choice is a ratio: replay costs `passes * num_params / replay_rate` s,
a download `4 * num_params / bandwidth` s. Exact replay is bit-identical to the server; a download
is too (the server's own bytes); the merged replay (one pass per seed touched in any missed round)
agrees only up to float rounding, so it is used only when allowed after `merged_after` missed rounds.
Defaults: 100 Mbit/s and the 5e8 elements/s of one native-backend pass measured on this 2-core CPU
by `benchmarks/client_sync.py` (SmolLM2-135M: 0.24 s per pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

REPLAY, MERGED, WEIGHTS, NONE = "replay", "merged", "weights", "none"


@dataclass(frozen=True)
class CatchUp:
    """The chosen way to sync, its replay passes (0 for a download) and its estimated seconds."""

    kind: Literal["replay", "merged", "weights", "none"]
    passes: int
    seconds: float


def plan_catchup(
    touched_per_round: Sequence[int],
    union_touched: int,
    num_params: int,
    replay_rate: float = 5e8,
    bandwidth: float = 12.5e6,
    merged_after: int = 0,
) -> CatchUp:
    """The cheapest allowed catch-up over the missed rounds (`touched_per_round`: seeds each touched).

    Args:
        touched_per_round: nonzero scalars of each missed round's downlink, in round order.
        union_touched: seeds touched in any missed round (the merged replay's passes).
        num_params: parameters of the model.
        replay_rate: weights one replay pass moves per second on the client.
        bandwidth: download bytes per second (weights travel as float32).
        merged_after: allow the merged replay when at least this many rounds were missed (0: never).
    """
    if replay_rate <= 0 or bandwidth <= 0:
        raise ValueError(
            "replay_rate and bandwidth must be > 0 (fix --deploy.replay_rate / --deploy.bandwidth)"
        )
    if not touched_per_round:
        return CatchUp(NONE, 0, 0.0)
    per_pass = num_params / replay_rate
    options = [CatchUp(REPLAY, int(sum(touched_per_round)), sum(touched_per_round) * per_pass)]
    if merged_after and len(touched_per_round) >= merged_after:
        options.append(CatchUp(MERGED, int(union_touched), union_touched * per_pass))
    options.append(CatchUp(WEIGHTS, 0, 4 * num_params / bandwidth))
    return min(options, key=lambda o: o.seconds)  # ties keep the earlier (exact replay first)
