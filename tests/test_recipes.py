"""Every recipe parses through the real CLI parser and builds its config objects without downloading."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.cli import FedKSeedCLI
from kit.data.datamodule import FederatedDataModule
from kit.loop import FederatedLoop
from kit.module import FedKSeedModule

from .conftest import REPO

RECIPES = sorted(
    p.relative_to(REPO)
    for p in (REPO / "recipes").rglob("*.yaml")
    if p.parent.name not in ("methods", "compare")
)
SCENARIOS = sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
METHOD_RECIPES = sorted(p.name for p in (REPO / "recipes" / "methods").glob("*.yaml"))


def _parse(configs: list[str], tmp_path: Path) -> FedKSeedCLI:
    """Build the recipe's objects (no model or data is loaded); GPU recipes are moved to the CPU."""
    args = [arg for c in configs for arg in ("-c", c)]
    args += [
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
        "--run_dir",
        str(tmp_path),
    ]
    return FedKSeedCLI(FedKSeedModule, FederatedDataModule, run=False, args=args)


def test_recipes_exist_for_the_six_paper_scenarios():
    names = {p.name for p in RECIPES}
    for scenario in ("ni", "dolly-alpha0.5", "dolly-alpha5.0"):
        for model in ("datajuicer-1.3b", "llama-3b"):
            assert f"paper-{scenario}-{model}.yaml" in names


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_recipe_builds_its_config(recipe: Path, tmp_path: Path):
    configs = [str(REPO / recipe)]
    if "multi-gpu" in recipe.parts:
        configs.insert(0, str(REPO / "recipes" / "paper-dolly-alpha0.5-datajuicer-1.3b.yaml"))
    cli = _parse(configs, tmp_path)
    assert isinstance(cli.model, FedKSeedModule) and cli.model.net is None  # nothing loaded yet
    assert isinstance(cli.datamodule, FederatedDataModule)
    loop = next(cb for cb in cli.trainer.callbacks if isinstance(cb, FederatedLoop))
    assert cli.config["data"]["tokenizer"] == cli.config["model"]["model"]  # linked
    if recipe.name.startswith("paper-"):
        assert loop.k == 4096 and loop.fraction == 0.05 and loop.local_steps == 200
        assert cli.model.hparams.lr == 3e-7 and cli.model.hparams.zo_eps == 5e-4
        assert cli.model.hparams.master_dtype == "float16"  # the reference's arithmetic (docs/precision.md)
        assert cli.trainer.max_epochs == (40 if "-ni-" in recipe.name else 60)


def test_a_recipe_exists_for_every_method():
    from kit.methods import METHODS

    assert {name.removesuffix(".yaml") for name in METHOD_RECIPES} == set(METHODS)


@pytest.mark.parametrize("method", METHOD_RECIPES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_composes_with_every_method(scenario: str, method: str, tmp_path: Path):
    base = str(REPO / "recipes" / scenario)
    cli = _parse([base, str(REPO / "recipes" / "methods" / method)], tmp_path)
    name = method.removesuffix(".yaml")
    assert cli.model.hparams.method == name and cli.config["method"] == name
    alone = _parse([base], tmp_path)
    loop = next(cb for cb in cli.trainer.callbacks if isinstance(cb, FederatedLoop))
    loop_alone = next(cb for cb in alone.trainer.callbacks if isinstance(cb, FederatedLoop))
    # the method changes what trains and travels, never the scenario: data, clients, rounds, steps
    assert cli.config["data"] == alone.config["data"] and cli.trainer.max_epochs == alone.trainer.max_epochs
    assert (loop.fraction, loop.local_steps, loop.seed) == (
        loop_alone.fraction,
        loop_alone.local_steps,
        loop_alone.seed,
    )


def test_unknown_recipe_key_is_rejected(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fed:\n  num_seedz: 12\n")
    with pytest.raises(SystemExit):
        _parse([str(REPO / "recipes" / "quickstart.yaml"), str(bad)], tmp_path)


def test_bad_value_names_the_flag():
    with pytest.raises(ValueError, match="--fed.fraction"):
        FederatedLoop(fraction=1.5)


SOURCED = sorted((REPO / "recipes" / "methods").glob("*.yaml")) + sorted(
    (REPO / "recipes").glob("paper-*.yaml")
)


@pytest.mark.parametrize("recipe", SOURCED, ids=lambda p: p.name)
def test_every_hyperparameter_carries_its_source(recipe: Path):
    """Each `key: value` line of a method or paper recipe ends with a comment giving its source."""
    unsourced = [
        line
        for line in recipe.read_text().splitlines()
        if line.strip()
        and not line.lstrip().startswith("#")
        and line.rstrip()[-1] != ":"  # not a section
        and not line.startswith("method:")  # the method's name, not a hyperparameter
        and "  # " not in line
    ]
    assert not unsourced, f"{recipe.name}: no source comment on {unsourced}"


@pytest.mark.parametrize("method", METHOD_RECIPES)
def test_paper_recipes_give_each_method_the_papers_budget(method: str, tmp_path: Path):
    from kit.federation.budget import LocalBudget, local_budget

    base = str(REPO / "recipes" / "paper-dolly-alpha0.5-datajuicer-1.3b.yaml")
    name = method.removesuffix(".yaml")
    only_name = tmp_path / "method.yaml"  # the method without its recipe: the paper recipe's budget alone
    only_name.write_text(f"method: {name}\n")
    for extra in (REPO / "recipes" / "methods" / method, only_name):
        cli = _parse([base, str(extra)], tmp_path)
        loop = next(cb for cb in cli.trainer.callbacks if isinstance(cb, FederatedLoop))
        # ferret: local batches, as its authors
        zo = name in ("fedkseed", "fedkseed-pro", "fedzo", "decomfl", "feedsign", "ferret")
        assert local_budget(name, loop.local_steps, loop.local_epochs) == (
            LocalBudget("steps", 200) if zo else LocalBudget("epochs", 1)
        )
        assert cli.config["data"]["overlong"] == "keep"  # the reference's treatment of overlong prompts
