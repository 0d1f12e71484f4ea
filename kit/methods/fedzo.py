"""FedZO (Fang et al. 2022), as the paper's baseline: full-parameter ZO-SGD, full model deltas up.

Each local step is a two-point ZO step along a fresh z (one perturbation per step, its seed a
function of (seed, round, client, step)); after tau steps the client uploads theta_c - theta_g for
every weight, and the server averages the deltas. Its uplink is the size of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from kit.methods.base import ClientUpdate, FedSettings, LossFn, StepOutcome
from kit.methods.tensor_payload import TensorPayloadMethod
from kit.methods.zo_common import make_perturber
from kit.zo.estimator import zo_step
from kit.zo.seeding import mix


class FedZO(TensorPayloadMethod):
    """FedZO over the module's ZO args `hp` (lr, zo_eps, distribution, z backend)."""

    name = "fedzo"
    sends_delta = True
    shares_frozen = True

    def __init__(self, hp: Mapping, fed: FedSettings) -> None:
        super().__init__(hp, fed)
        self.perturber = None

    def _make_trainable(self, net: torch.nn.Module) -> torch.nn.Module:
        net.requires_grad_(False)
        self.perturber = make_perturber(net, self.hp, self.z_record)
        return net

    def client(
        self,
        server_round: int,
        client_id: int,
        loss_fn: LossFn,
        saved_global: Callable[[], Iterable[torch.Tensor]],
    ) -> ClientUpdate:
        return _FedZOClient(self, server_round, client_id, loss_fn, saved_global)

    def z_definition(self):
        return self.perturber.definition if self.perturber is not None else None

    def close(self) -> None:
        if self.perturber is not None:
            self.perturber.close()


class _FedZOClient(ClientUpdate):
    def __init__(self, method: FedZO, server_round: int, client_id: int, loss_fn: LossFn, saved_global):
        self.m, self.round, self.client_id, self.loss_fn = method, server_round, client_id, loss_fn
        self.saved_global = saved_global

    def step(self, batch: dict, local_step: int) -> StepOutcome:
        hp = self.m.hp
        seed = mix(self.m.fed.seed, 0xF2D0, self.round, self.client_id, local_step)
        with torch.no_grad():
            out = zo_step(
                self.m.perturber,
                lambda: self.loss_fn(batch),
                -1,
                seed,
                eps=hp["zo_eps"],
                lr=hp["lr"],
                weight_decay=hp["weight_decay"],
                grad_clip=hp["grad_clip"],
            )
        return StepOutcome(out.loss, out.skipped)

    @torch.no_grad()
    def finish(self) -> bytes:
        # the loop restores the global weights before anything else runs, so the delta can be
        # formed in place (no second copy of the model)
        for (_, p), g in zip(self.m.named, self.saved_global(), strict=True):
            p.sub_(g.to(p.device))
        tensors = {n: p for n, p in self.m.named}
        if self.m.dp is not None and self.m.dp.mode == "local":
            tensors = self.m.dp_local(self.round, self.client_id, tensors)
        return self.m.encode_uplink(self.round, self.client_id, tensors)
