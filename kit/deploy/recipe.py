"""The recipe of a Flower run: the same YAML as `fedkseed fit`, read by the server and every node.

    recipe = load_recipe(["recipes/quickstart.yaml"], {"fed.num_seeds": 64, "trainer.max_epochs": 2})

Keys are those of `fedkseed fit` (`model.*`, `data.*`, `fed.*`, `method`, `trainer.max_epochs` =
rounds); omitted keys take the same defaults as the CLI, so the same recipe and seed train the
same numbers under Lightning and on Flower.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from kit.data.datamodule import FederatedDataModule
from kit.federation.faults import FaultModel
from kit.methods import METHODS
from kit.methods.base import FedSettings
from kit.module import FedKSeedModule
from kit.rounds.config import FLAG_DEFAULTS, FedConfig, init_defaults


@dataclass(frozen=True)
class Recipe:
    """A resolved recipe: the method, its hyperparameters, the data and federation args, rounds."""

    method: str
    hp: dict  # FedKSeedModule's arguments (the methods' hyperparameters)
    data: dict  # FederatedDataModule's arguments
    fed: dict  # the `fed` flags
    rounds: int

    @property
    def config(self) -> FedConfig:
        """The `fed` flags per concern (kit/rounds/config.py), as Lightning's loop reads them."""
        return FedConfig.from_flags(self.fed)

    @property
    def settings(self) -> FedSettings:
        return self.config.settings

    @property
    def faults(self) -> FaultModel:
        return self.config.faults

    def datamodule(self) -> FederatedDataModule:
        return FederatedDataModule(**self.data)


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _merge(into: dict, other: dict) -> dict:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def load_recipe(paths: list[str], overrides: dict | None = None) -> Recipe:
    """Merge the recipe files (later ones win) and dotted `overrides`, fill the CLI's defaults."""
    tree: dict = {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"recipe {path} not found: fix the run config's `recipe` (paths, comma-separated)"
            )
        _merge(tree, yaml.safe_load(Path(path).read_text()) or {})
    for key, value in (overrides or {}).items():
        _set(tree, key, value)
    method = tree.get("method", tree.get("model", {}).get("method", "fedkseed"))
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r}: fix the recipe's `method` (one of {', '.join(METHODS)})"
        )
    hp = {**init_defaults(FedKSeedModule), **tree.get("model", {}), "method": method}
    data = {**init_defaults(FederatedDataModule), **tree.get("data", {})}
    data["tokenizer"] = hp["model"]  # as the CLI links model.model -> data.tokenizer
    fed = {**FLAG_DEFAULTS, **tree.get("fed", {})}
    rounds = int(tree.get("trainer", {}).get("max_epochs", 1))
    return Recipe(method, hp, data, fed, rounds)


def recipe_from_run_config(run_config: dict) -> Recipe:
    """The recipe named by a Flower run config: `recipe` (comma-separated paths), `overrides` (JSON)."""
    paths = [p for p in str(run_config.get("recipe", "")).split(",") if p]
    overrides = json.loads(str(run_config.get("overrides", "") or "{}"))
    if not paths and not overrides:
        raise ValueError("the Flower run config names no recipe: pass --run-config 'recipe=\"PATH.yaml\"'")
    return load_recipe(paths, overrides)
