"""DeComFL (Li et al., ICLR 2025, arXiv 2405.15861): ZO-SGD on server-chosen seeds, P scalars per step.

Read from the authors' code, ZidongLiu/DeComFL at 0c426e6 (Apache-2.0); every line here is the kit's own.

Client (cezo_fl/client.py `ResetClient.local_update`): from the global weights, tau local steps; step k
draws P perturbations z_k,i from the round's server seeds (cezo_fl/server.py `train_one_step`: the
server picks one seed per local step; the estimator derives perturbation i's generator from it) and
estimates each scalar at the same weights (cezo_fl/gradient_estimators/random_gradient_estimator.py
`_zo_grad_estimate`):

    g_k,i = (L(theta + mu z_k,i) - L(theta - mu z_k,i)) / 2 mu     rge-central (default)
    g_k,i = (L(theta + mu z_k,i) - L(theta)) / mu                  rge-forward (L(theta) once per step)

then moves by SGD on the averaged estimate (`update_model_given_seed_and_grad`, momentum 0):
theta <- theta - lr * (1/P) sum_i g_k,i z_k,i. The uplink is the tau x P scalars.

Server (`CeZO_Server.train_one_step`, `fed_avg`): per step and perturbation the mean of the sampled
clients' scalars, G_k,i (the reference averages unweighted; the kit's `fed.equal_weights` chooses, and
`fed.aggregation` median / trimmed mean are its robust rules as `byzantine/aggregation.py`). The downlink
is G; the server and every client move the global weights by the same update with G in place of g, step
after step (`pull_model`), and a client that missed rounds replays their G (`client_last_updates`,
`SeedAndGradientRecords`): here `catch_up`. Weight decay (the kit's, off by default), when set,
decays the matrices by lr * weight_decay once per step with a nonzero scalar, on the server as on clients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from kit.errors import UsageError
from kit.federation.bounds import check_scalars, scalar_uplink_bound
from kit.federation.messages import Uplink, encode_uplink
from kit.federation.robust import bound_scalars
from kit.federation.server import combine_scalars
from kit.methods.base import ClientUpdate, FedSettings, LossFn, StepOutcome
from kit.methods.step_seeds import StepSeedMethod, apply_step
from kit.zo.estimator import probe

ESTIMATORS = ("central", "forward")


class DeComFL(StepSeedMethod):
    """DeComFL over the module's ZO args `hp` (lr, zo_eps = mu, zo_perturbations = P, zo_estimator)."""

    name = "decomfl"
    tag = 0xDEC0F1

    def __init__(self, hp: Mapping, fed: FedSettings) -> None:
        self.width = int(hp.get("zo_perturbations", 1))
        self.estimator = hp.get("zo_estimator", "central")
        if self.width < 1:
            raise UsageError(f"--model.zo_perturbations must be >= 1, got {self.width}")
        if self.estimator not in ESTIMATORS:
            raise UsageError(
                f"--model.zo_estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}"
            )
        super().__init__(hp, fed)
        # an honest |g| is at most C / 2 mu (central) or C / mu (forward), C the loss range or grad_clip
        one = scalar_uplink_bound(1, hp["zo_eps"], hp.get("grad_clip"), fed.loss_range)
        self.uplink_bound = (one * (2 if self.estimator == "forward" else 1)) if fed.screen_bound else None

    def client(self, server_round: int, client_id: int, loss_fn: LossFn, saved_global) -> ClientUpdate:
        return _DeComFLClient(self, server_round, client_id, loss_fn)

    def step_scalars(self, values: np.ndarray) -> np.ndarray:
        return values.astype(np.float64) / self.width  # the mean over the P perturbations

    def check_uplink(self, values: np.ndarray) -> None:
        check_scalars(values, self.uplink_bound)

    def server_rule(
        self, server_round: int, values: list[np.ndarray], num_samples: Sequence[int]
    ) -> np.ndarray:
        if self.fed.scalar_bound is not None:
            values = [bound_scalars(v, self.fed.scalar_bound) for v in values]
        f = self.fed
        return combine_scalars(
            values, num_samples, self.size, f.aggregation, f.equal_weights, f.trim_fraction
        )

    def summary(self) -> dict:
        return {**super().summary(), "estimator": self.estimator, "uplink_scalar_bound": self.uplink_bound}


class _DeComFLClient(ClientUpdate):
    def __init__(self, method: DeComFL, server_round: int, client_id: int, loss_fn: LossFn) -> None:
        self.m, self.round, self.client_id, self.loss_fn = method, server_round, client_id, loss_fn
        self.grads = np.zeros((method.tau, method.width), dtype=np.float64)

    def step(self, batch: dict, local_step: int) -> StepOutcome:
        m, hp = self.m, self.m.hp
        seeds = m.step_seeds(self.round, local_step)
        loss = lambda: self.loss_fn(batch)  # noqa: E731
        with torch.no_grad():
            base = float(loss()) if m.estimator == "forward" else None
            if base is not None and not math.isfinite(base):
                return StepOutcome(base, skipped=True)
            pending, first_loss, skipped = 0.0, None, True
            for i, seed in enumerate(seeds):  # every estimate at the step's starting weights
                p = probe(m.perturber, loss, seed, hp["zo_eps"], hp.get("grad_clip"), base)
                if i < len(seeds) - 1 and p.pending:
                    m.perturber.add(seed, -p.pending)
                elif i == len(seeds) - 1:
                    pending = p.pending  # undone in the update's first pass
                self.grads[local_step, i] = p.grad
                first_loss = p.loss if first_loss is None else first_loss
                skipped = skipped and p.skipped
            scalars = self.grads[local_step] / m.width
            apply_step(m.perturber, seeds, scalars, hp["lr"], m.step_decay, restore=-pending)
        return StepOutcome(base if base is not None else first_loss, skipped)

    def finish(self) -> bytes:
        up = Uplink(self.round, self.client_id, self.grads.reshape(-1).astype(np.float32))
        return encode_uplink(up, self.m.fingerprint)
