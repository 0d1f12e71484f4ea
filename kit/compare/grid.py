"""A comparison grid: scenarios x methods x seeds, read from one YAML file.

    # recipes/compare/smoke.yaml (paths are relative to this file)
    scenarios: {quickstart: [../quickstart.yaml]}     # name -> scenario recipe(s)
    methods: [fedkseed, fedit]                        # each adds ../methods/<name>.yaml
    seeds: [0, 1, 2]                                  # each sets every key of `seed_keys`
    args: [--trainer.max_epochs, "1"]                 # `fedkseed fit` arguments for every cell
    method_args: {fedit: [--model.lr, "1e-4"]}        # ... for one method's cells
    variants: {lr3e-3: [--model.lr, "3e-3"]}          # optional: each scenario once per variant

A cell's run is `fedkseed fit -c <scenario recipes> -c <method recipe> --method M <seed args> <args>
<method_args> <variant args> --run_dir OUT/<scenario>/<method>/seed<S>`. With `variants` (a sweep, e.g. of
the lr) every scenario runs once per variant, named `<scenario>@<variant>`, the variant's arguments last so
they win. By default a seed changes the federation seed (client sampling, seed choices, dropout) and
Lightning's global seed; the data split and the eval set stay those of the scenario, so the spread over
seeds is training randomness on one fixed benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from kit.methods import METHODS

GRID_KEYS = {
    "scenarios",
    "methods",
    "seeds",
    "args",
    "method_args",
    "seed_keys",
    "method_recipes",
    "variants",
}
SEED_KEYS = ("seed_everything", "fed.seed")


class GridError(ValueError):
    """The grid file is malformed; the message names the key and the fix."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    scenario: str
    method: str
    seed: int
    argv: tuple[str, ...]  # `fedkseed fit` arguments, without --run_dir

    @property
    def name(self) -> str:
        return f"{self.scenario}/{self.method}/seed{self.seed}"


def _str_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise GridError(f"{where} must be a list of strings, e.g. [--trainer.max_epochs, '2']")
    return [str(v) for v in value]


def _recipe(base: Path, path: str, where: str) -> str:
    found = (base / path).resolve()
    if not found.is_file():
        raise GridError(
            f"{where}: recipe {path!r} not found at {found} (paths are relative to the grid file)"
        )
    return str(found)


def load_grid(path: str | Path) -> list[Cell]:
    """The grid's cells, in order scenario, method, seed; raises GridError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise GridError(
            f"grid file {path} not found: pass an existing YAML with -c, e.g. recipes/compare/smoke.yaml"
        )
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GridError(f"grid file {path} is not valid YAML: {err}") from None
    if not isinstance(spec, dict):
        raise GridError(f"grid file {path} must be a mapping with scenarios, methods and seeds")
    unknown = set(spec) - GRID_KEYS
    if unknown:
        raise GridError(f"grid file {path}: unknown keys {sorted(unknown)}; allowed: {sorted(GRID_KEYS)}")
    base = path.parent
    scenarios = spec.get("scenarios")
    if not isinstance(scenarios, dict) or not scenarios:
        raise GridError(f"{path}: 'scenarios' must map a name to a list of scenario recipes")
    methods = spec.get("methods")
    if not isinstance(methods, list) or not methods:
        raise GridError(f"{path}: 'methods' must be a non-empty list of {list(METHODS)}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise GridError(f"{path}: unknown methods {bad}; known: {list(METHODS)}")
    seeds = spec.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise GridError(f"{path}: 'seeds' must be a non-empty list of integers >= 0, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds) or len(set(methods)) != len(methods):
        raise GridError(f"{path}: 'seeds' and 'methods' must not repeat an entry")
    seed_keys = _str_list(spec.get("seed_keys", list(SEED_KEYS)), f"{path}: 'seed_keys'")
    args = _str_list(spec.get("args", []), f"{path}: 'args'")
    method_args = spec.get("method_args") or {}
    if not isinstance(method_args, dict) or set(method_args) - set(methods):
        raise GridError(f"{path}: 'method_args' must map methods of the grid to argument lists")
    method_dir = spec.get("method_recipes", "../methods")
    variants = spec.get("variants", {"": []})
    if not isinstance(variants, dict) or not variants or not all(isinstance(k, str) for k in variants):
        raise GridError(
            f"{path}: 'variants' must map names to argument lists, e.g. {{lr1e-3: [--model.lr, '1e-3']}}"
        )
    cells = []
    for scenario, recipes in scenarios.items():
        recipes = [
            _recipe(base, r, f"scenario {scenario}") for r in _str_list(recipes, f"scenario {scenario}")
        ]
        for variant, variant_args in variants.items():
            name = f"{scenario}@{variant}" if variant else str(scenario)
            variant_args = _str_list(variant_args, f"{path}: variants.{variant}")
            for method in methods:
                method_recipe = _recipe(base, f"{method_dir}/{method}.yaml", f"method {method}")
                extra = _str_list(method_args.get(method, []), f"{path}: method_args.{method}")
                for seed in seeds:
                    argv = [a for r in recipes for a in ("-c", r)]
                    argv += ["-c", method_recipe, "--method", method]
                    argv += [a for key in seed_keys for a in (f"--{key}", str(seed))]
                    cells.append(Cell(name, method, seed, tuple(argv + args + extra + variant_args)))
    return cells
