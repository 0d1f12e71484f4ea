"""A SuperNode's long-lived worker: its replica, data and model stay loaded between messages.

    python -m kit.deploy.node_worker --state-dir nodes/node-0 --watch-pid 4242

Started by the node's first ClientApp (kit/deploy/node_link.py), never by hand. It serves one
request at a time (a node's model is one buffer; Flower hands a SuperNode one message at a time
anyway) and exits as soon as the process it watches is gone, so `kill -9` of a SuperNode's tree
also ends its worker within a second. Its pid is in STATE_DIR/worker.pid, its log in worker.log.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
from pathlib import Path

from kit.deploy.node_link import worker_address, worker_key


def alive(pid: int) -> bool:
    """`pid` runs (a zombie does not count: it has exited, its parent just has not reaped it)."""
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return False
    return "\nState:\tZ" not in status


def watch(pid: int, interval: float = 0.5) -> None:
    """Exit this process at once when `pid` is gone (a daemon thread)."""

    def loop() -> None:
        while alive(pid):
            time.sleep(interval)
        print(f"[worker] process {pid} is gone: exiting", flush=True)
        os._exit(0)

    threading.Thread(target=loop, daemon=True).start()


def serve(state: Path, watch_pid: int) -> None:
    """Answer requests `(op, run_config, node_config, request)` with `("ok", reply)` or `("error", text)`."""
    watch(watch_pid)
    from kit.deploy.node_ops import handle  # torch and the kit: once per node, not once per message

    with Listener(worker_address(state), family="AF_UNIX", authkey=worker_key(state)) as listener:
        (state / "worker.pid").write_text(str(os.getpid()))
        print(f"[worker] pid {os.getpid()} serving {state}, watching {watch_pid}", flush=True)
        while True:
            try:
                with listener.accept() as conn:
                    _answer(conn, handle)
            except (EOFError, OSError, AuthenticationError) as err:  # a caller that died or was refused
                print(f"[worker] connection dropped: {err!r}", flush=True)


def _answer(conn, handle) -> None:
    op, run_config, node_config, request = conn.recv()
    t = request.get("train", {})
    print(f"[worker] {op} round={t.get('round', '-')} client={t.get('client', '-')}", flush=True)
    t0 = time.perf_counter()
    try:
        reply = ("ok", handle(op, run_config, node_config, request))
    except Exception as err:  # the ClientApp turns it into Flower's error reply
        traceback.print_exc()
        reply = ("error", f"{type(err).__name__}: {err}")
    conn.send(reply)
    print(f"[worker] {op} done in {time.perf_counter() - t0:.2f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, help="the node's state dir (node config state-dir)")
    parser.add_argument("--watch-pid", type=int, required=True, help="exit when this process is gone")
    args = parser.parse_args(argv)
    serve(Path(args.state_dir).resolve(), args.watch_pid)


if __name__ == "__main__":
    main()
