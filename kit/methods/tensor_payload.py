"""The server rule of every method whose payload is tensors: weighted averaging (FedAvg).

Clients upload their shared parameters (or, with `sends_delta`, their change from the global
values), encoded by `kit.federation.tensors` in the configured wire dtype. The server decodes and
validates each uplink, averages them weighted by sample count in ascending client id, and sends the
average back; server and clients then apply the decoded downlink, so all hold the same numbers.
The checkpoint holds the global values of the shared parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from kit.federation.aggregate import client_weights
from kit.federation.messages import DOWNLINK, NO_CLIENT, UPLINK
from kit.federation.tensors import decode_tensors, encode_tensors
from kit.methods.base import FedSettings, Method


class TensorPayloadMethod(Method):
    """Base of FedZO and the first-order methods; subclasses set `sends_delta` and `_make_trainable`."""

    sends_delta = False  # FedZO uploads theta_c - theta_g; the others their parameters' values
    shares_frozen = False  # FedZO shares every parameter though none needs autograd

    def __init__(self, hp: Mapping, fed: FedSettings) -> None:
        self.hp, self.fed = hp, fed
        self.wire_dtype: str = hp["wire_dtype"]
        self.net: torch.nn.Module | None = None
        self.named: list[tuple[str, torch.Tensor]] = []
        self._loaded: dict[str, torch.Tensor] | None = None

    def _make_trainable(self, net: torch.nn.Module) -> torch.nn.Module:
        """Set `requires_grad` on the parameters to train (wrapping `net` if needed); returns the model."""
        raise NotImplementedError

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        net = self.net = self._make_trainable(net)
        self.named = [(n, p) for n, p in net.named_parameters() if p.requires_grad or self.shares_frozen]
        if not self.named:
            raise ValueError(f"{self.name}: the model has no parameter to train")
        return net

    @property
    def spec(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(n, tuple(p.shape)) for n, p in self.named]

    def global_params(self) -> list[torch.Tensor]:
        return [p for _, p in self.named]

    def encode_uplink(self, server_round: int, client_id: int, tensors: Mapping[str, torch.Tensor]) -> bytes:
        return encode_tensors(UPLINK, server_round, client_id, tensors, self.wire_dtype)

    def aggregate_train(
        self, server_round: int, uplinks: Sequence[tuple[int, bytes]], num_samples: Sequence[int]
    ) -> bytes:
        weights = client_weights(num_samples, self.fed.equal_weights)
        total: dict[str, torch.Tensor] | None = None
        for (cid, wire), w in zip(uplinks, weights, strict=True):  # one decoded uplink in memory at a time
            msg = decode_tensors(
                wire, UPLINK, self.spec, self.wire_dtype, expected_round=server_round, expected_client=cid
            )
            if total is None:
                total = {n: t.mul_(float(w)) for n, t in msg.tensors.items()}
            else:
                for n, t in msg.tensors.items():
                    total[n].add_(t, alpha=float(w))
        return encode_tensors(DOWNLINK, server_round, NO_CLIENT, total, self.wire_dtype)

    @torch.no_grad()
    def apply_downlink(self, server_round: int, downlink: bytes) -> dict[str, float]:
        msg = decode_tensors(downlink, DOWNLINK, self.spec, self.wire_dtype, expected_round=server_round)
        for name, p in self.named:
            value = msg.tensors[name].to(p.device)
            p.add_(value) if self.sends_delta else p.copy_(value)
        return {}

    def state_dict(self) -> dict:
        return {"global": {n: p.detach().cpu().clone() for n, p in self.named}}

    def load_state_dict(self, state: dict) -> None:
        self._loaded = state["global"]

    @torch.no_grad()
    def restore_global(self) -> None:
        if self._loaded is None:
            return
        for name, p in self.named:
            if name not in self._loaded or tuple(self._loaded[name].shape) != tuple(p.shape):
                raise ValueError(
                    f"checkpoint of {self.name} does not hold parameter {name} {tuple(p.shape)}: "
                    "it was made with another model or adapter config"
                )
            p.copy_(self._loaded[name])

    def summary(self) -> dict:
        return {
            "wire_dtype": self.wire_dtype,
            "shared_parameters": sum(p.numel() for _, p in self.named),
            "payload": "deltas" if self.sends_delta else "weights",
        }
