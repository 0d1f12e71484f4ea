"""The federated methods: FedKSeed(-Pro) and the paper's baselines, by their `--method` names."""

from __future__ import annotations

from collections.abc import Mapping

from kit.methods.base import ClientUpdate, FedSettings, Method, StepOutcome
from kit.methods.fedkseed import FedKSeed
from kit.methods.fedzo import FedZO
from kit.methods.first_order import FirstOrder

# name -> (adapter, default optimizer) of the first-order methods
_FIRST_ORDER = {
    "fedavg": (None, "adam"),
    "fedit": ("lora", "adam"),
    "fedit-sgd": ("lora", "sgd"),
    "fedptuning": ("p_tuning", "adam"),
    "fedprompt": ("prompt_tuning", "adam"),
}
METHODS = ("fedkseed", "fedkseed-pro", "fedzo", *_FIRST_ORDER)
SCALAR_PAYLOAD = ("fedkseed", "fedkseed-pro")


def build_method(name: str, hp: Mapping, fed: FedSettings) -> Method:
    """The method `name` over the module's hyperparameters `hp` and the federation settings `fed`."""
    if name in SCALAR_PAYLOAD:
        return FedKSeed(hp, fed, pro=name == "fedkseed-pro")
    if name == "fedzo":
        return FedZO(hp, fed)
    if name in _FIRST_ORDER:
        adapter, optimizer = _FIRST_ORDER[name]
        return FirstOrder(name, hp, fed, adapter, optimizer)
    raise ValueError(f"unknown method {name!r}: fix --method (one of {', '.join(METHODS)})")


__all__ = ["METHODS", "ClientUpdate", "FedSettings", "Method", "StepOutcome", "build_method"]
