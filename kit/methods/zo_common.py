"""What the two zeroth-order methods (FedKSeed and FedZO) share: the perturber over all weights."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from kit.zo.perturb import Perturber


def zo_backend(requested: str, device: torch.device) -> str:
    """The z backend: `auto` is native on a CPU and torch on an accelerator."""
    if requested == "auto":
        return "native" if device.type == "cpu" else "torch"
    return requested


def make_perturber(net: torch.nn.Module, hp: Mapping) -> Perturber:
    """A perturber over every parameter of `net`, in parameter order, as the module's args say."""
    params = list(net.parameters())
    return Perturber(
        params,
        hp["distribution"],
        keep_z=hp["keep_z"],
        backend=zo_backend(hp["zo_backend"], params[0].device),
    )
