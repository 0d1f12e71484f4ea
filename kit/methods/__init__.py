"""The federated methods: FedKSeed(-Pro), the paper's baselines and later methods, by `--method` name.

`REGISTRY` is the one list of methods: the CLI's choices and help, the recipe check on Flower and
which runs export as seed files all derive from it. Adding a method is a file in this package, a
line here and a recipe in `recipes/methods/` (docs/architecture.md, "Adding a method").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from kit.methods.base import ClientUpdate, FedSettings, Method, StepOutcome
from kit.methods.decomfl import DeComFL
from kit.methods.fedkseed import FedKSeed
from kit.methods.fedzo import FedZO
from kit.methods.feedsign import FeedSign
from kit.methods.ferret import Ferret
from kit.methods.first_order import FirstOrder


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: how to build it from (hyperparameters, federation settings), a one-line
    description for `--help`, and whether its runs export as seed files (`fedkseed export`)."""

    build: Callable[[Mapping, FedSettings], Method]
    help: str
    seed_file: bool = False


def _first_order(name: str, adapter: str | None, optimizer: str) -> Callable[[Mapping, FedSettings], Method]:
    return lambda hp, fed: FirstOrder(name, hp, fed, adapter, optimizer)


REGISTRY: dict[str, MethodSpec] = {
    "fedkseed": MethodSpec(partial(FedKSeed, pro=False), "ZO over K seeds, K scalars up and down", True),
    "fedkseed-pro": MethodSpec(partial(FedKSeed, pro=True), "FedKSeed with seed probabilities", True),
    "fedzo": MethodSpec(FedZO, "ZO-SGD with fresh z per step, full deltas"),
    "fedit": MethodSpec(_first_order("fedit", "lora", "adam"), "LoRA, Adam"),
    "fedit-sgd": MethodSpec(_first_order("fedit-sgd", "lora", "sgd"), "LoRA, SGD"),
    "fedptuning": MethodSpec(_first_order("fedptuning", "p_tuning", "adam"), "P-tuning, Adam"),
    "fedprompt": MethodSpec(_first_order("fedprompt", "prompt_tuning", "adam"), "prompt tuning, Adam"),
    "fedavg": MethodSpec(_first_order("fedavg", None, "adam"), "every weight, Adam"),
    "ferret": MethodSpec(Ferret, "every weight, SGD; the update as coefficients on shared-seed bases"),
    "decomfl": MethodSpec(DeComFL, "ZO on server seeds, P scalars per step up and down"),
    "feedsign": MethodSpec(FeedSign, "ZO on shared seeds, one sign bit per step up and down"),
}
METHODS = tuple(REGISTRY)
SCALAR_PAYLOAD = tuple(name for name, spec in REGISTRY.items() if spec.seed_file)


def methods_help() -> str:
    """The `--method` help: every registered method and what it trains."""
    listed = "; ".join(f"{name} ({spec.help})" for name, spec in REGISTRY.items())
    return f"Federated method: {listed} (settings: recipes/methods/<name>.yaml)."


def build_method(name: str, hp: Mapping, fed: FedSettings) -> Method:
    """The method `name` over the module's hyperparameters `hp` and the federation settings `fed`."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}: fix --method (one of {', '.join(METHODS)})")
    return REGISTRY[name].build(hp, fed)


__all__ = [
    "METHODS",
    "REGISTRY",
    "ClientUpdate",
    "FedSettings",
    "Method",
    "MethodSpec",
    "StepOutcome",
    "build_method",
    "methods_help",
]
