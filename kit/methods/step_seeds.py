"""What DeComFL and FeedSign share: every local step's seeds are the server's, one per (round, step,
perturbation), and each round's downlink is a few values per step that every party applies in step order.

    theta <- theta - lr * sum_i s_k,i z(seed_r,k,i)   for each step k of round r, in step order

A method sets `width` (values per step) and `name`, says which `step_scalars` a step's values give
(DeComFL: the mean scalars / P; FeedSign: the vote), and its client and server rule. The global
state is theta_0 plus every round's downlink values: the checkpoint holds no weights, a node that missed
rounds replays their downlinks (`catch_up`), exactly as the server applied them (`apply_step`).
The seeds are a function of the federation seed (DeComFL's server draws them per round; here its
generator is seeded by `fed.seed`), so neither direction carries them, as FedKSeed's pool.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kit.errors import UsageError
from kit.federation.messages import (
    SCALARS,
    SIGNS,
    Downlink,
    decode_downlink,
    decode_uplink,
    encode_downlink,
    max_signs_size,
    max_uplink_size,
)
from kit.federation.screening import Accepted
from kit.methods.base import FedSettings, Method
from kit.methods.zo_common import SeededWeights
from kit.zo.perturb import Perturber
from kit.zo.seeding import mix


def apply_step(
    perturber: Perturber,
    seeds: Sequence[int],
    scalars: Sequence[float],
    lr: float,
    decay: float = 0.0,
    restore: float = 0.0,
) -> int:
    """One step's update: theta <- (1 - decay) theta - lr * sum_i scalars_i z(seeds_i) (decay on
    matrices, riding on the first pass; zero scalars make no pass). The passes go from the last seed
    to the first, so a client's pending displacement along the last seed (`restore`, see
    `kit.zo.estimator.Probe`) is undone in its pass. Returns the passes made."""
    passes = 0
    last = len(seeds) - 1
    for i in range(last, -1, -1):
        back = restore if i == last else 0.0
        if scalars[i] == 0 and not back:
            continue
        perturber.update(seeds[i], lr, float(scalars[i]), decay=decay if passes == 0 else 0.0, restore=back)
        passes += 1
    return passes


def coin(*key: int) -> float:
    """A fair, seeded +-1 (ties of FeedSign's votes; the vote of a step without a finite difference)."""
    return 1.0 if mix(*key) & 1 else -1.0


class StepSeedMethod(SeededWeights, Method):
    """Server-chosen per-step seeds, `width` values per step up and down, replayed in step order."""

    width: int = 1  # values per local step
    signs: bool = False  # the values travel as sign bits (FeedSign) instead of float32 scalars
    tag: int = 0  # the method's domain of seeds (mixed into every seed)

    def __init__(self, hp: Mapping, fed: FedSettings) -> None:
        self.hp, self.fed = hp, fed
        self.tau = fed.local_steps
        self.size = self.tau * self.width
        key = f"{self.name}:{fed.seed}:{self.tau}:{self.width}".encode()
        self.fingerprint = hashlib.sha256(key).digest()[:8]
        self.encodings = (SIGNS,) if self.signs else SCALARS
        self.step_decay = hp["lr"] * hp["weight_decay"]
        self.downlinks: list[np.ndarray] = []  # every round's values: with theta_0, the global state
        self.perturber: Perturber | None = None
        self._params: list[torch.Tensor] = []

    # -- the schedule ----------------------------------------------------------------------------
    def step_seeds(self, server_round: int, step: int) -> list[int]:
        """The seeds of local step `step` (0-based) of `server_round`, one per perturbation."""
        return [mix(self.fed.seed, self.tag, server_round, step, i) for i in range(self.width)]

    @abstractmethod
    def step_scalars(self, values: np.ndarray) -> np.ndarray:
        """The coefficients of one step's update (of lr * z(seed_i)) from the step's downlink values."""

    @abstractmethod
    def check_uplink(self, values: np.ndarray) -> None:
        """Refuse (MessageError) decoded uplink values no honest client sends."""

    @abstractmethod
    def server_rule(
        self, server_round: int, values: list[np.ndarray], num_samples: Sequence[int]
    ) -> np.ndarray:
        """The round's downlink values from the accepted clients' (ascending id; possibly none)."""

    # -- Method --------------------------------------------------------------------------------------
    def max_uplink_bytes(self) -> int:
        return max_signs_size(self.size) if self.signs else max_uplink_size(self.size)

    def decode_uplink(self, server_round: int, wire: bytes) -> tuple[int, Any]:
        up = decode_uplink(wire, self.size, self.fingerprint, server_round, self.encodings)
        self.check_uplink(up.scalars)
        return up.client_id, up.scalars

    def aggregate_accepted(
        self, server_round: int, accepted: Sequence[Accepted], num_samples: Sequence[int]
    ) -> bytes:
        values = self.server_rule(server_round, [a.value for a in accepted], num_samples)
        return self._encode(server_round, values)

    def apply_downlink(self, server_round: int, downlink: bytes) -> dict[str, float]:
        values = self._decode(server_round, downlink)
        passes = self._apply(server_round, values)
        self.downlinks.append(values)
        return {"fed/update_passes": float(passes)}

    def state_dict(self) -> dict:
        return {
            "fingerprint": self.fingerprint.hex(),
            "downlinks": [torch.from_numpy(v.copy()) for v in self.downlinks],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint.hex():
            raise UsageError(
                f"the checkpoint's {self.name} seed schedule (fingerprint {state['fingerprint']}) is not "
                "this run's: resume with the checkpoint's --fed.seed, --fed.local_steps and "
                "--model.zo_perturbations"
            )
        self.downlinks = [v.numpy().astype(np.float32) for v in state["downlinks"]]

    def restore_global(self) -> None:
        """theta_g = theta_0 replayed through every round's downlink (bit-identical to the server)."""
        for r, values in enumerate(self.downlinks, start=1):
            self._apply(r, values)

    # -- a node's catch-up: replay of the missed rounds' downlinks ------------------------------------
    def downlink(self, server_round: int) -> bytes:
        return self._encode(server_round, self.downlinks[server_round - 1])

    def replay_cost(self, first: int, last: int) -> tuple[list[int], int | None]:
        per_round = [int(np.count_nonzero(v)) for v in self.downlinks[first - 1 : last]]
        return per_round, None  # distinct seeds every step: nothing to merge

    def catch_up(self, at: int, downlinks: Sequence[tuple[int, bytes]], merged: bool = False) -> int:
        decoded = [(r, self._decode(r, wire)) for r, wire in downlinks]
        passes, last = 0, at
        for r, values in decoded:
            if r <= at:
                continue
            if r != last + 1:
                raise ValueError(f"downlinks must be consecutive rounds: round {r} follows {last}")
            passes += self._apply(r, values)
            last = r
        return passes

    def z_definition(self):
        return self.perturber.definition if self.perturber is not None else None

    def summary(self) -> dict:
        return {"values_per_step": self.width, "uplink_bytes_max": self.max_uplink_bytes()}

    def close(self) -> None:
        if self.perturber is not None:
            self.perturber.close()

    # -- helpers -------------------------------------------------------------------------------------
    def _encode(self, server_round: int, values: np.ndarray) -> bytes:
        return encode_downlink(Downlink(server_round, values), self.fingerprint, self.signs)

    def _decode(self, server_round: int, wire: bytes) -> np.ndarray:
        down = decode_downlink(wire, self.size, self.fingerprint, server_round, self.encodings)
        return down.scalars

    def _apply(self, server_round: int, values: np.ndarray) -> int:
        """Move the weights by one round's downlink values, step by step; returns the passes."""
        lr, passes = self.hp["lr"], 0
        for k, row in enumerate(values.reshape(self.tau, self.width)):
            seeds = self.step_seeds(server_round, k)
            passes += apply_step(self.perturber, seeds, self.step_scalars(row), lr, self.step_decay)
        return passes
