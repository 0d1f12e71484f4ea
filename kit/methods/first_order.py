"""First-order baselines: FedAvg (all weights), FedIT / FedIT-SGD (LoRA), FedPTuning, FedPrompt.

Every client starts each round from the global shared parameters with a fresh optimizer, takes
tau backpropagation steps (batch from the datamodule) and uploads its shared parameters; the
server averages them weighted by sample count (`kit.methods.tensor_payload`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch

from kit.methods.adapters import ADAPTERS
from kit.methods.base import ClientUpdate, FedSettings, LossFn, StepOutcome
from kit.methods.tensor_payload import TensorPayloadMethod
from kit.zo.seeding import mix

OPTIMIZERS = ("adam", "adamw", "sgd")


class FirstOrder(TensorPayloadMethod):
    """A first-order method: `adapter` (None = every weight) trained by `default_optimizer`."""

    def __init__(
        self, name: str, hp: Mapping, fed: FedSettings, adapter: str | None, default_optimizer: str
    ) -> None:
        super().__init__(hp, fed)
        self.name, self.adapter = name, adapter
        self.optimizer = hp["optimizer"] or default_optimizer
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--model.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if name == "fedit-sgd" and self.optimizer != "sgd":
            raise ValueError("fedit-sgd trains with SGD: drop --model.optimizer or use --method fedit")

    def _make_trainable(self, net: torch.nn.Module) -> torch.nn.Module:
        if self.adapter is None:
            return net.requires_grad_(True)
        net.requires_grad_(False)
        torch.manual_seed(mix(self.fed.seed, 0xADA))  # adapter init: a function of the federation seed
        return ADAPTERS[self.adapter](net, self.hp)

    def make_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        lr, wd = self.hp["lr"], self.hp["weight_decay"]
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.hp["momentum"], weight_decay=wd)
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, weight_decay=wd)

    def client(
        self,
        server_round: int,
        client_id: int,
        loss_fn: LossFn,
        saved_global: Callable[[], Iterable[torch.Tensor]],
    ) -> ClientUpdate:
        return _FirstOrderClient(self, server_round, client_id, loss_fn, saved_global)

    def summary(self) -> dict:
        return {**super().summary(), "optimizer": self.optimizer, "adapter": self.adapter}


class _FirstOrderClient(ClientUpdate):
    def __init__(
        self, method: FirstOrder, server_round: int, client_id: int, loss_fn: LossFn, saved_global
    ) -> None:
        self.m, self.round, self.client_id, self.loss_fn = method, server_round, client_id, loss_fn
        self.saved_global = saved_global
        # dropout (LoRA, prompt encoder) draws from the global RNG: make it a function of
        # (seed, round, client), so results do not depend on the process that trains the client
        torch.manual_seed(mix(method.fed.seed, server_round, client_id, 0xD20))
        self.params = method.global_params()
        self.opt = method.make_optimizer(self.params)
        method.net.train()  # dropout on while the client trains (evaluation switches it off)

    def step(self, batch: dict, local_step: int) -> StepOutcome:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            return StepOutcome(value, skipped=True)
        loss.backward()
        clip = self.m.hp["grad_clip"]
        if clip is not None and clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.opt.step()
        return StepOutcome(value)

    def finish(self) -> bytes:
        self.opt = None  # free the optimizer state before encoding
        self.m.net.eval()
        tensors = {n: p.detach() for n, p in self.m.named}
        if self.m.dp is not None and self.m.dp.mode == "local":
            tensors = self.m.dp_local(self.round, self.client_id, tensors, self.saved_global())
        return self.m.encode_uplink(self.round, self.client_id, tensors)
