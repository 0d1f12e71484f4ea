"""The ClientApp's line to its node's worker: a long-lived process that keeps torch, the data and
the model loaded, so a message costs its work, not a fresh import of torch and transformers.

    reply = call("train", run_config, node_config, request)   # from inside a ClientApp

flwr 1.42 starts a new `flwr-clientapp` process for every message (`--isolation subprocess` and
`process` alike). The first message of a node starts `python -m kit.deploy.node_worker` for the
node's state dir; later ones connect to it over an abstract Unix socket named after that dir,
authenticated by a key file only the node's user can read. The worker watches the process that
spawned the ClientApp (the SuperNode's SuperExec): when the SuperNode dies, so does its worker.
(Node config `worker=false` runs the work in the ClientApp's process instead: kit/deploy/client_app.py.)
Only the standard library here: this module is imported by every ClientApp process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import subprocess
import sys
import time
from multiprocessing.connection import Client
from pathlib import Path

START_TIMEOUT_S = 900.0  # a cold worker imports torch and tokenizes the node's data


def state_dir(node_config: dict) -> Path:
    """Where the node keeps its replica and worker files (node config `state-dir`)."""
    pid = node_config.get("partition-id", "x")
    return Path(
        str(node_config.get("state-dir") or os.environ.get("FEDKSEED_STATE_DIR") or f"fedkseed-node-{pid}")
    ).resolve()


def worker_address(state: Path) -> str:
    """The worker's socket: Linux's abstract namespace (no file, no path-length limit)."""
    return "\0fedkseed-node-" + hashlib.sha256(str(state).encode()).hexdigest()[:24]


def worker_key(state: Path) -> bytes:
    """The shared secret of the node's ClientApps and worker (created once, mode 0600)."""
    path = state / "worker.key"
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def _connect(state: Path):
    return Client(worker_address(state), family="AF_UNIX", authkey=worker_key(state))


def _start_worker(state: Path, watch_pid: int):
    """Start the worker for `state` and return a connection to it, once it listens."""
    log = open(state / "worker.log", "ab")  # noqa: SIM115 (the worker keeps it)
    args = [sys.executable, "-m", "kit.deploy.node_worker", "--state-dir", str(state)]
    proc = subprocess.Popen(  # its own session: it outlives this ClientApp process, not the SuperNode
        [*args, "--watch-pid", str(watch_pid)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    end = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the node worker exited ({proc.returncode}); see {state / 'worker.log'}")
        with contextlib.suppress(ConnectionRefusedError, FileNotFoundError):
            return _connect(state)
        time.sleep(0.2)
    proc.kill()
    log_path = state / "worker.log"
    raise TimeoutError(f"the node worker did not listen within {START_TIMEOUT_S} s; see {log_path}")


def worker_connection(state: Path, watch_pid: int):
    """A connection to the node's worker, started first if none runs (one starter at a time)."""
    state.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(ConnectionRefusedError, FileNotFoundError):
        return _connect(state)
    with open(state / "worker.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent ClientApps of one node start one worker
        with contextlib.suppress(ConnectionRefusedError, FileNotFoundError):
            return _connect(state)
        return _start_worker(state, watch_pid)


def call(op: str, run_config: dict, node_config: dict, request: dict, watch_pid: int | None = None) -> dict:
    """Do `op` in this node's worker.

    A worker started now lives as long as `watch_pid` (default: this ClientApp's parent, the
    SuperNode's SuperExec, which itself exits with the SuperNode)."""
    watch = os.getppid() if watch_pid is None else watch_pid
    with worker_connection(state_dir(node_config), watch) as conn:
        conn.send((op, dict(run_config), dict(node_config), request))
        status, value = conn.recv()
    if status != "ok":
        raise RuntimeError(f"node worker: {value}")
    return value
