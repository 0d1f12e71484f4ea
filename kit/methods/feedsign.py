"""FeedSign (Cai, Chen and Zhu, arXiv 2501.17610): one sign bit per step each way, majority vote.

The paper has no public code; this follows its description. Each step every client estimates the
projected gradient along the step's shared-seed direction z (the kit's two-point estimate, as
`kit.zo.estimator`: p = (L(theta + eps z) - L(theta - eps z)) / 2 eps) and votes sign(p), one bit; the
server takes the majority sign of the votes and sends it back, one bit; everyone moves by
theta <- theta - lr * vote * z. The paper aggregates once per step (tau = 1); with tau local steps the
kit makes each step's vote on the client's own trajectory (each client moves by its own sign between
steps) and the server applies the tau majority signs in step order, as DeComFL applies its scalars.

The kit's choices, where the paper leaves room: the majority is weighted by sample count unless
`fed.equal_weights` (recipes/methods/feedsign.yaml sets one vote per client); `fed.aggregation`
median / trimmed mean take the sign of that rule over the votes; a tie, and the vote of a step whose
estimate was skipped (non-finite loss, `grad_clip`) or exactly 0, is a seeded fair coin, so every
value on the wire is one bit. A round with no accepted vote sends no bits and changes nothing.
Weight decay (off by default) decays matrices by lr * weight_decay with each applied step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kit.federation.messages import MessageError, Uplink, encode_uplink
from kit.federation.robust import robust_aggregate
from kit.methods.base import ClientUpdate, LossFn, StepOutcome
from kit.methods.step_seeds import StepSeedMethod, apply_step, coin
from kit.zo.estimator import probe

TIE, ABSTAIN = 0x7E, 0xAB  # the coins' domains: the server's ties, a client's vote without an estimate


def majority(
    votes: Sequence[np.ndarray],
    num_samples: Sequence[int],
    aggregation: str = "mean",
    equal_weights: bool = False,
    trim_fraction: float = 0.0,
) -> np.ndarray:
    """Per step, the sign (-1, 0 tie, +1) of the clients' +-1 votes: of their sum weighted by sample
    count (or one vote each), in integers so a tie is exact; or of the robust rule over them."""
    rows = np.stack(votes).astype(np.int64)
    if aggregation == "mean":
        weights = np.ones(len(votes), np.int64) if equal_weights else np.asarray(num_samples, np.int64)
        return np.sign(weights @ rows).astype(np.float32)
    return np.sign(robust_aggregate(rows.astype(np.float64), aggregation, trim_fraction)).astype(np.float32)


class FeedSign(StepSeedMethod):
    """FeedSign over the module's ZO args `hp` (lr, zo_eps, distribution, z backend)."""

    name = "feedsign"
    signs = True
    tag = 0xFEED51

    def client(self, server_round: int, client_id: int, loss_fn: LossFn, saved_global) -> ClientUpdate:
        return _FeedSignClient(self, server_round, client_id, loss_fn)

    def step_scalars(self, values: np.ndarray) -> np.ndarray:
        return values  # the vote: theta <- theta - lr * vote * z

    def check_uplink(self, values: np.ndarray) -> None:
        if not np.all(np.abs(values) == 1):
            raise MessageError(f"a FeedSign uplink carries one vote per step ({self.tau}), it has none")

    def server_rule(
        self, server_round: int, values: list[np.ndarray], num_samples: Sequence[int]
    ) -> np.ndarray:
        if not values:
            return np.zeros(self.size, dtype=np.float32)  # no vote: no bits, no update
        f = self.fed
        vote = majority(values, num_samples, f.aggregation, f.equal_weights, f.trim_fraction)
        for k in np.flatnonzero(vote == 0):
            vote[k] = coin(f.seed, self.tag, TIE, server_round, int(k))
        return vote


class _FeedSignClient(ClientUpdate):
    def __init__(self, method: FeedSign, server_round: int, client_id: int, loss_fn: LossFn) -> None:
        self.m, self.round, self.client_id, self.loss_fn = method, server_round, client_id, loss_fn
        self.votes = np.zeros(method.tau, dtype=np.float32)

    def step(self, batch: dict, local_step: int) -> StepOutcome:
        m, hp = self.m, self.m.hp
        [seed] = m.step_seeds(self.round, local_step)
        with torch.no_grad():
            p = probe(m.perturber, lambda: self.loss_fn(batch), seed, hp["zo_eps"], hp.get("grad_clip"))
            own = float(np.sign(p.grad))  # the client moves by its own sign (0: only the restore)
            apply_step(m.perturber, [seed], [own], hp["lr"], m.step_decay, restore=-p.pending)
        key = (m.fed.seed, m.tag, ABSTAIN, self.round, self.client_id, local_step)
        self.votes[local_step] = own if own else coin(*key)
        return StepOutcome(p.loss, p.skipped)

    def finish(self) -> bytes:
        return encode_uplink(Uplink(self.round, self.client_id, self.votes), self.m.fingerprint, signs=True)
