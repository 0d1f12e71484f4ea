"""FedKSeed in Flower's simulation runtime: N virtual SuperNodes as Ray actors, same strategy.

`flwr.simulation.run_simulation` runs the deployment's strategy and ClientApp.

    pip install -e '.[simulation]'     # flwr[simulation]: Ray, not installed by scripts/install.sh
    python -m kit.deploy.simulate --recipe recipes/quickstart.yaml --nodes 3 --run-dir runs/flower-sim

Flower gives virtual node i the node config `partition-id=i num-partitions=N`; its replica lives in
RUN_DIR/nodes/node-i. Ray's actors are long-lived, so the ClientApp does the work in its own process
(no node worker). RUN_DIR gets summary.json and checkpoints/server.pt, as a deployment's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from kit.deploy.client_app import make_client_app
from kit.deploy.local import run_config_of, run_parser


def ray_missing() -> str | None:
    """Why the simulation cannot run here (None when Ray imports)."""
    try:
        import ray  # noqa: F401
    except ImportError as err:
        return f"Flower's simulation needs Ray ({err}): pip install -e '.[simulation]'"
    return None


def simulate(run_config: dict, num_nodes: int, cpus_per_node: float | None = None) -> dict:
    """Run the recipe of `run_config` (keys as kit/deploy/app) on `num_nodes` virtual SuperNodes.

    By default each ClientApp actor asks for every CPU: one message at a time, with as many torch threads
    as a Lightning run or a SuperNode's worker has (Ray sets an actor's OMP_NUM_THREADS to its CPUs), so
    the numbers are theirs bit for bit; a CPU matrix product splits its sums by thread count.
    """
    cpus = max(1, os.cpu_count() or 1)
    from flwr.simulation import run_simulation

    from kit.deploy.server_app import strategy_from_run_config

    if num_nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {num_nodes}")
    if why := ray_missing():
        raise RuntimeError(why)
    run_dir = Path(run_config["run-dir"]).resolve()
    server_app = ServerApp()

    @server_app.main()
    def server_main(grid: Grid, context: Context) -> None:  # run_simulation passes no run config
        strategy_from_run_config(run_config).run(grid)

    client_app = make_client_app(run_config, {"worker": False}, state_root=str(run_dir / "nodes"))
    backend = {
        "client_resources": {"num_cpus": cpus_per_node or cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False},
    }
    run_simulation(server_app, client_app, num_supernodes=num_nodes, backend_config=backend)
    summary = run_dir / "summary.json"
    if not summary.is_file():
        raise RuntimeError(f"the simulation wrote no {summary}: see the log above")
    return json.loads(summary.read_text())


def main(argv: list[str] | None = None) -> None:
    args = run_parser(__doc__.splitlines()[0], "runs/flower-sim").parse_args(argv)
    summary = simulate(run_config_of(args), args.nodes)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_round"}))


if __name__ == "__main__":
    main()
