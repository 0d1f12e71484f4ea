"""The server rule of every method whose payload is tensors: weighted averaging (FedAvg).

Clients upload their shared parameters (or, with `sends_delta`, their change from the global
values), encoded by `kit.federation.tensors` in the configured wire dtype. The server screens each
uplink (a full decode, then the tensors are let go: one decoded payload in memory at a time), averages
the accepted ones weighted by sample count in ascending client id (decoding each again), and sends
the average back; server and clients then apply the decoded downlink, so all hold the same numbers.
`--fed.aggregation median|trimmed_mean` holds every accepted payload decoded at once (n copies).
A round with no accepted uplink sends NO_UPDATE (0 bytes) and changes nothing.
The checkpoint holds the global values of the shared parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from kit.errors import UsageError
from kit.federation.aggregate import client_weights
from kit.federation.bounds import check_tensor_norm, payload_norm
from kit.federation.messages import DOWNLINK, NO_CLIENT, UPLINK, MessageError
from kit.federation.robust import robust_aggregate
from kit.federation.screening import Accepted
from kit.federation.tensors import TensorMessage, decode_tensors, encode_tensors, payload_size
from kit.methods.base import NO_UPDATE, FedSettings, Method


class TensorPayloadMethod(Method):
    """Base of FedZO and the first-order methods; subclasses set `sends_delta` and `_make_trainable`."""

    supports_dp = True
    sends_delta = False  # FedZO uploads theta_c - theta_g; the others their parameters' values
    shares_frozen = False  # FedZO shares every parameter though none needs autograd

    def __init__(self, hp: Mapping, fed: FedSettings) -> None:
        if fed.scalar_bound is not None:
            raise UsageError(
                f"--fed.scalar_bound bounds FedKSeed's scalars; {hp.get('method')} sends tensors: unset it "
                "(use --fed.aggregation median or trimmed_mean)"
            )
        self.hp, self.fed = hp, fed
        self.wire_dtype: str = hp["wire_dtype"]
        self.net: torch.nn.Module | None = None
        self.named: list[tuple[str, torch.Tensor]] = []
        self._loaded: dict[str, torch.Tensor] | None = None
        self._global_norm = 0.0  # ||theta_g|| of the shared parameters, for the uplink norm bound

    def _make_trainable(self, net: torch.nn.Module) -> torch.nn.Module:
        """Set `requires_grad` on the parameters to train (wrapping `net` if needed); returns the model."""
        raise NotImplementedError

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        net = self.net = self._make_trainable(net)
        self.named = [(n, p) for n, p in net.named_parameters() if p.requires_grad or self.shares_frozen]
        if not self.named:
            raise ValueError(f"{self.name}: the model has no parameter to train")
        self._global_norm = payload_norm(self.global_params())
        return net

    @property
    def spec(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(n, tuple(p.shape)) for n, p in self.named]

    def global_params(self) -> list[torch.Tensor]:
        return [p for _, p in self.named]

    def encode_uplink(self, server_round: int, client_id: int, tensors: Mapping[str, torch.Tensor]) -> bytes:
        return encode_tensors(UPLINK, server_round, client_id, tensors, self.wire_dtype)

    def max_uplink_bytes(self) -> int:
        return payload_size(self.spec, self.wire_dtype)  # exact: every legal uplink has this length

    def _decode(self, server_round: int, wire: bytes) -> TensorMessage:
        return decode_tensors(wire, UPLINK, self.spec, self.wire_dtype, expected_round=server_round)

    def decode_uplink(self, server_round: int, wire: bytes) -> tuple[int, None]:
        size = self.max_uplink_bytes()
        if len(wire) < size:  # the layout is fixed by the spec, so a short message lost its tail
            raise MessageError(f"tensor uplink truncated: {len(wire)} bytes of {size}", "truncated")
        msg = self._decode(server_round, wire)
        if self.fed.screen_bound:
            norm = payload_norm(msg.tensors.values())
            numel = sum(t.numel() for t in msg.tensors.values())
            if self.dp is not None and self.dp.mode == "local":  # less the noise: sqrt(n) + 10 std w.h.p.
                norm = max(0.0, norm - self.dp.clip - self.dp.std * (math.sqrt(numel) + 10))
            check_tensor_norm(norm, self._global_norm, numel, self.fed.tensor_norm_ratio, self.sends_delta)
        return msg.client_id, None  # validated; the tensors are let go

    def aggregate_accepted(
        self, server_round: int, accepted: Sequence[Accepted], num_samples: Sequence[int]
    ) -> bytes:
        if not accepted:
            return NO_UPDATE
        if self.dp is not None and self.dp.mode == "central":
            total = self._dp_central(server_round, accepted)
            return encode_tensors(DOWNLINK, server_round, NO_CLIENT, total, self.wire_dtype)
        if self.fed.aggregation != "mean":
            msgs = [self._decode(server_round, a.wire).tensors for a in accepted]
            total = {
                n: torch.from_numpy(
                    robust_aggregate(
                        np.stack([m[n].numpy() for m in msgs]), self.fed.aggregation, self.fed.trim_fraction
                    ).astype(np.float32)
                )
                for n, _ in self.spec
            }
            return encode_tensors(DOWNLINK, server_round, NO_CLIENT, total, self.wire_dtype)
        weights = client_weights(num_samples, self.fed.equal_weights)
        total: dict[str, torch.Tensor] | None = None
        for a, w in zip(accepted, weights, strict=True):  # one decoded uplink in memory at a time
            msg = self._decode(server_round, a.wire)
            if total is None:
                total = {n: t.mul_(float(w)) for n, t in msg.tensors.items()}
            else:
                for n, t in msg.tensors.items():
                    total[n].add_(t, alpha=float(w))
        return encode_tensors(DOWNLINK, server_round, NO_CLIENT, total, self.wire_dtype)

    # -- client-level DP (DP-FedAvg on the flattened update; kit/privacy) ---------------------------
    @torch.no_grad()
    def _dp_central(self, server_round: int, accepted: Sequence[Accepted]) -> dict[str, torch.Tensor]:
        """The global values moved by (sum of the clipped changes + noise) / m (the change itself for
        `sends_delta`). The round core restores the global values before aggregating."""
        dp = self.dp
        glob = {n: p.detach().float().cpu() for n, p in self.named}
        total = {n: torch.zeros_like(g) for n, g in glob.items()}
        for a in accepted:  # ascending client id, one decoded payload at a time
            change = self._decode(server_round, a.wire).tensors
            if not self.sends_delta:
                change = {n: t.float().sub_(glob[n]) for n, t in change.items()}
            factor = dp.clip_factor(payload_norm(change.values()))
            for n, t in change.items():
                total[n].add_(t.float(), alpha=factor)
        noise = self._flat_noise(dp.central_words(server_round))
        for n, t in total.items():
            t.add_(noise[n]).div_(dp.sample_size)
            if not self.sends_delta:
                t.add_(glob[n])
        return total

    @torch.no_grad()
    def dp_local(
        self, server_round: int, client_id: int, tensors: Mapping[str, torch.Tensor], glob=None
    ) -> dict[str, torch.Tensor]:
        """Local DP of a client's payload: its change (`tensors` minus the global values `glob`, or
        `tensors` itself for `sends_delta`) clipped and noised by the client, as it sends it."""
        dp = self.dp
        change = {n: t.detach().to("cpu", torch.float32, copy=True) for n, t in tensors.items()}
        if not self.sends_delta:
            pairs = zip(self.named, glob, strict=True)
            glob = {n: g.detach().to("cpu", torch.float32) for (n, _), g in pairs}
            change = {n: t.sub_(glob[n]) for n, t in change.items()}
        factor = dp.clip_factor(payload_norm(change.values()))
        noise = self._flat_noise(dp.local_words(server_round, client_id))
        out = {n: t.mul_(factor).add_(noise[n]) for n, t in change.items()}
        return out if self.sends_delta else {n: t.add_(glob[n]) for n, t in out.items()}

    def _flat_noise(self, words: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """The noise of the flattened payload (spec order), split per tensor."""
        sizes = [math.prod(shape) for _, shape in self.spec]
        flat = torch.from_numpy(self.dp.noise(sum(sizes), words, np.float32))
        return {n: part.view(shape) for (n, shape), part in zip(self.spec, flat.split(sizes), strict=True)}

    @torch.no_grad()
    def apply_downlink(self, server_round: int, downlink: bytes) -> dict[str, float]:
        if downlink == NO_UPDATE:
            return {}
        msg = decode_tensors(downlink, DOWNLINK, self.spec, self.wire_dtype, expected_round=server_round)
        for name, p in self.named:
            value = msg.tensors[name].to(p.device)
            p.add_(value) if self.sends_delta else p.copy_(value)
        self._global_norm = payload_norm(self.global_params())
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
        self._global_norm = payload_norm(self.global_params())

    def summary(self) -> dict:
        return {
            "wire_dtype": self.wire_dtype,
            "shared_parameters": sum(p.numel() for _, p in self.named),
            "payload": "deltas" if self.sends_delta else "weights",
            "uplink_norm_ratio": self.fed.tensor_norm_ratio if self.fed.screen_bound else None,
        }
