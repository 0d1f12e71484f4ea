"""What the zeroth-order methods share: the perturber over all weights; and, for those whose global
update is scalars along seeded z (FedKSeed, DeComFL, FeedSign), the frozen model they move."""

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


class SeededWeights:
    """`prepare` and `global_params` of a method that moves every weight by scalars along seeded z: no
    autograd graph, the global parameters are all of the net's, one perturber over them.

    Mixed in before `Method`; the class sets `hp` and `z_record` (and `perturber = None`) itself."""

    hp: Mapping
    z_record: ZDefinition | None
    perturber: Perturber | None
    _params: list[torch.Tensor]

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        net.requires_grad_(False)  # ZO needs no autograd graph
        self._params = list(net.parameters())
        self.perturber = make_perturber(net, self.hp, self.z_record)
        return net

    def global_params(self) -> list[torch.Tensor]:
        return self._params
