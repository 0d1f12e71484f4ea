"""The server's side of a round: screening + aggregation into the downlink, and the round's metrics
under one naming (`train/loss`, `fed/...`, `zo/skipped_steps`) for every runtime."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kit.federation.screening import Screening
from kit.methods.base import Method
from kit.rounds.client import ClientResult
from kit.rounds.plan import RoundPlan


@dataclass(frozen=True)
class RoundOutcome:
    """The round's downlink bytes (what every node applies) and the screening of its uplinks."""

    downlink: bytes
    screening: Screening


def aggregate_round(
    method: Method, plan: RoundPlan, results: Sequence[ClientResult], num_samples: Mapping[int, int]
) -> RoundOutcome:
    """Screen the uplinks that arrived (in arrival order) and aggregate the accepted ones.

    `num_samples`: each client's sample count, for every client sampled this round (0: unknown)."""
    expected = {c: int(num_samples.get(c, 0)) for c in plan.clients}
    downlink, screening = method.aggregate_train(plan.round, [(r.client, r.wire) for r in results], expected)
    return RoundOutcome(downlink, screening)


def round_metrics(
    results: Sequence[ClientResult], outcome: RoundOutcome, method_metrics: Mapping[str, float]
) -> dict[str, float]:
    """The round's training and traffic metrics, from the clients that sent an uplink.

    `train/loss` is the mean loss over their updating steps (NaN when no client trained)."""
    stats = np.array(
        [(r.loss_sum, r.steps, r.skipped, len(r.wire)) for r in results], dtype=np.float64
    ).reshape(-1, 4)
    sent = bool(len(stats))
    return {
        "train/loss": float(stats[:, 0].sum() / max(stats[:, 1].sum(), 1)) if sent else math.nan,
        "fed/uplink_bytes_mean": float(stats[:, 3].mean()) if sent else 0.0,
        "fed/uplink_bytes_max": float(stats[:, 3].max()) if sent else 0.0,
        "fed/downlink_bytes": float(len(outcome.downlink)),
        "fed/local_steps": float(stats[:, 1].sum() + stats[:, 2].sum()),  # every client's, skipped too
        **method_metrics,
        "zo/skipped_steps": float(stats[:, 2].sum()),
    }
