"""What the two zeroth-order methods (FedKSeed and FedZO) share: the perturber over all weights."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from kit.zo.definition import ZDefinition
from kit.zo.perturb import DEFAULT_CHUNK, Perturber


def make_perturber(net: torch.nn.Module, hp: Mapping, recorded: ZDefinition | None = None) -> Perturber:
    """A perturber over every parameter of `net`, in parameter order, as the module's args say.

    `recorded` (a checkpoint's or seed file's z) sets the chunk size and a backend that computes it
    on this device; the caller checks the result against it (`kit.zo.definition.check_same`).
    """
    return Perturber(
        list(net.parameters()),
        hp["distribution"],
        keep_z=hp["keep_z"],
        chunk_size=recorded.chunk_size if recorded else DEFAULT_CHUNK,
        backend=hp["zo_backend"],
        recorded=recorded,
    )
