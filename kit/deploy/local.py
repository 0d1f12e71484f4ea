"""A real Flower deployment on this machine: a SuperLink and N SuperNodes on 127.0.0.1, one run.

    python -m kit.deploy.local --recipe recipes/quickstart.yaml --nodes 3 --run-dir runs/flower

Every port is a free one chosen at start, every process is bound to 127.0.0.1 and stopped at the
end (also on error or Ctrl-C). Node i hosts the clients c with c % N == i and keeps its replica in
RUN_DIR/nodes/node-i. `flwr run` submits kit/deploy/app with the recipe; the ServerApp writes
RUN_DIR/summary.json and RUN_DIR/checkpoints/server.pt. Logs: RUN_DIR/logs/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "app"
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flower-superexec, flwr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop(0))
        todo += children.get(tree[-1], [])
    return tree


def cmdline(pid: int) -> str:
    """The command line of `pid` ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class LocalDeployment:
    """SuperLink + SuperNodes as child processes; `stop()` (or the with-block) ends them all."""

    def __init__(self, run_dir: str | Path, num_nodes: int) -> None:
        if num_nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {num_nodes}")
        self.run_dir, self.num_nodes = Path(run_dir).resolve(), num_nodes
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home = self.run_dir / "flwr-home"
        # flwr 1.42 serves the Fleet, Control and Runtime APIs on one HTTP port
        self.ports = {k: free_port() for k in ("link", "health")}
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        }
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        # a process group per child: stopping it also stops the superexec/app processes it spawned
        return subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start(self) -> LocalDeployment:
        p = self.ports
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{p["link"]}"\n'
            "insecure = true\n"
        )
        self.superlink = self._spawn(
            "superlink",
            [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(p["link"]),
             "--health-server-address", f"127.0.0.1:{p['health']}",
             # the kit is installed already: no `uv sync` of the app's dependencies per ServerApp
             "--disable-runtime-dependency-installation"],
        )  # fmt: skip
        try:
            self._wait_port(p["link"])
            for i in range(self.num_nodes):
                self.start_node(i)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, i: int) -> None:
        """Start (or restart) the SuperNode of partition `i`; its replica stays in nodes/node-i."""
        state = self.run_dir / "nodes" / f"node-{i}"
        config = f'partition-id={i} num-partitions={self.num_nodes} state-dir="{state}"'
        self.nodes[i] = self._spawn(
            f"supernode-{i}",
            [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.ports['link']}",
             "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", config],
        )  # fmt: skip

    def kill_node(self, i: int) -> None:
        """kill -9 the SuperNode of partition `i` and everything it spawned (its worker then exits)."""
        proc = self.nodes.pop(i)
        _signal(process_tree(proc.pid), signal.SIGKILL)
        proc.wait(timeout=10)

    def worker_pid(self, i: int) -> int | None:
        """The pid of node `i`'s worker (kit/deploy/node_worker.py) while it runs."""
        state = self.run_dir / "nodes" / f"node-{i}"
        try:
            pid = int((state / "worker.pid").read_text())
        except (OSError, ValueError):
            return None
        line = cmdline(pid)  # the file may name a pid that exited and was reused
        return pid if "kit.deploy.node_worker" in line and str(state) in line else None

    def serverapp_pids(self) -> list[int]:
        """The ServerApp processes the SuperLink runs (one per submitted run still going)."""
        tree = process_tree(self.superlink.pid) if self.superlink else []
        return [pid for pid in tree if "flwr-serverapp" in cmdline(pid)]

    def kill_serverapp(self) -> None:
        """kill -9 the running ServerApp(s): the server dies; the SuperLink and SuperNodes stay."""
        pids = self.serverapp_pids()
        if not pids:
            raise RuntimeError("no ServerApp runs: submit a run first")
        _signal(pids, signal.SIGKILL)

    def wait_log(self, name: str, text: str, timeout: float, after: int = 0) -> int:
        """Wait until logs/NAME.log holds `text` past byte `after`; returns the offset after it."""
        path, end = self.logs / f"{name}.log", time.monotonic() + timeout
        while time.monotonic() < end:
            data = path.read_bytes() if path.is_file() else b""
            at = data.find(text.encode(), after)
            if at >= 0:
                return at + len(text)
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not in {path} after {timeout} s")

    def submit(self, run_config: dict, timeout: float = 120) -> subprocess.CompletedProcess:
        """`flwr run kit/deploy/app local --run-config ...` (returns once the run is submitted)."""
        rc = self.run_dir / "run-config.toml"  # a file: a JSON override holds spaces and quotes
        rc.write_text(tomli_w.dumps(run_config))
        done = subprocess.run(
            [str(BIN / "flwr"), "run", str(APP), "local", "--run-config", str(rc)],
            env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"flwr run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def wait_summary(self, rounds: int, timeout: float) -> dict:
        """summary.json once it reports `rounds` rounds (it is rewritten after every round);
        raises TimeoutError naming the logs."""
        path, end = self.run_dir / "summary.json", time.monotonic() + timeout
        while time.monotonic() < end:
            if path.is_file():
                summary = json.loads(path.read_text())
                if summary["rounds"] >= rounds:
                    return summary
            if self.superlink.poll() is not None:
                raise RuntimeError(f"the SuperLink exited; see {self.logs / 'superlink.log'}")
            time.sleep(0.5)
        raise TimeoutError(f"no summary with {rounds} rounds after {timeout} s; see the logs in {self.logs}")

    def _wait_port(self, port: int, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if self.superlink.poll() is not None:
                raise RuntimeError(f"the SuperLink exited; see {self.logs / 'superlink.log'}")
            time.sleep(0.2)
        raise TimeoutError(f"the SuperLink did not listen on 127.0.0.1:{port} within {timeout} s")

    def stop(self) -> None:
        """Stop every process this deployment started (SIGTERM, then SIGKILL after 10 s)."""
        procs = [*self.nodes.values(), *([self.superlink] if self.superlink else [])]
        # the SuperExec and app processes they spawned run in sessions of their own: stop the trees;
        # node workers left their ClientApp's tree (they would exit on their own within a second)
        workers = [self.worker_pid(i) for i in range(self.num_nodes)]
        trees = [pid for proc in procs for pid in process_tree(proc.pid)]
        trees += [pid for pid in workers if pid is not None]
        _signal(trees, signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        _signal(trees, signal.SIGKILL)
        for proc in procs:
            proc.wait(timeout=10)
        self.nodes, self.superlink = {}, None

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_parser(description: str, run_dir: str) -> argparse.ArgumentParser:
    """The command line of a Flower run (`kit.deploy.local`, `kit.deploy.simulate`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--recipe", required=True, help="recipe path(s), comma-separated (as `fedkseed fit -c`)"
    )
    parser.add_argument("--nodes", type=int, default=3, help="SuperNodes to start (node i hosts c %% N == i)")
    parser.add_argument("--run-dir", default=run_dir, help="summary.json, checkpoint, logs, replicas")
    parser.add_argument(
        "--overrides", default="{}", help='JSON of dotted recipe keys, e.g. {"fed.num_seeds": 64}'
    )
    parser.add_argument(
        "--round-timeout", type=float, default=600.0, help="seconds a round waits for uplinks"
    )
    parser.add_argument(
        "--secagg",
        action="store_true",
        help="FedKSeed: masked uplinks, the server sees their sum (docs/privacy.md)",
    )
    return parser


def run_config_of(args: argparse.Namespace) -> dict:
    """The Flower run config (keys of kit/deploy/app/pyproject.toml) of parsed `run_parser` args."""
    return {
        "recipe": ",".join(str(Path(p).resolve()) for p in args.recipe.split(",")),
        "overrides": args.overrides,
        "run-dir": str(Path(args.run_dir).resolve()),
        "round-timeout": args.round_timeout,
        "secagg": bool(getattr(args, "secagg", False)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = run_parser(__doc__.splitlines()[0], "runs/flower")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds the whole run may take")
    args = parser.parse_args(argv)
    from kit.deploy.recipe import recipe_from_run_config

    run_config = run_config_of(args)
    rounds = recipe_from_run_config(run_config).rounds
    with LocalDeployment(run_config["run-dir"], args.nodes) as dep:
        dep.submit(run_config)
        summary = dep.wait_summary(rounds, args.timeout)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_round"}))


if __name__ == "__main__":
    main()
