"""The ServerApp: FedKSeed's strategy (kit/deploy/strategy.py) over the run config's recipe.

Run config keys: `recipe` (comma-separated recipe paths), `overrides` (JSON of dotted keys),
`run-dir`, `round-timeout` (s), `replay-rate`, `bandwidth` (catch-up cost model), `merged-after`,
`secagg` (true: FedKSeed's uplinks are masked pairwise, the server learns only their sum; docs/privacy.md).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from kit.deploy.recipe import recipe_from_run_config
from kit.deploy.strategy import FedKSeedStrategy

app = ServerApp()


def strategy_from_run_config(run_config) -> FedKSeedStrategy:
    """The strategy configured by a Flower run config."""
    return FedKSeedStrategy(
        recipe_from_run_config(run_config),
        run_dir=str(run_config.get("run-dir", "runs/flower")),
        round_timeout=float(run_config.get("round-timeout", 600.0)),
        replay_rate=float(run_config.get("replay-rate", 5e8)),
        bandwidth=float(run_config.get("bandwidth", 12.5e6)),
        merged_after=int(run_config.get("merged-after", 0)),
        secagg=str(run_config.get("secagg", "false")).lower() in ("true", "1"),
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy_from_run_config(context.run_config).run(grid)
