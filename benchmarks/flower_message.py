"""Cost of one Flower train message on a SuperNode: a fresh process doing all the work vs the node worker.

    python benchmarks/flower_message.py [--quick] [--repeats 3]

flwr 1.42 starts a new `flwr-clientapp` process for every message. Measured here, each in a fresh
Python process as Flower starts it (both import the ClientApp module, i.e. flwr):

    fresh_process   the whole message in that process, as before the node worker: import torch,
                    transformers and the kit, tokenize the node's data, load the model, sync, train
    node_worker     the ClientApp process hands the message to the node's warm worker
                    (kit/deploy/node_link.py) over its Unix socket; the worker syncs and trains

Wall seconds and CPU seconds (the process, plus the worker's share for node_worker: what other
processes on the machine disturb least). Model: SmolLM2-135M-Instruct (--quick: a 1-layer random
Llama with its tokenizer), Natural Instructions data, tau = 3 steps of client 0 in round 1.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, SHARED_DATA, SMOLLM2, base_parser, emit, machine, median

CHILD = """
import json, sys
from kit.deploy.client_app import app  # what every flwr-clientapp process imports
from kit.deploy.node_link import call
op, rc, node, req, watch = json.loads(sys.argv[1])
out = call(op, rc, node, req, watch_pid=watch)
assert out["steps"] == 3, out
"""


def tiny_model(root: Path) -> str:
    """A 1-layer random Llama with SmolLM2's tokenizer, saved under `root` (as tests/conftest.py)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kit.models import load_tokenizer

    tok = load_tokenizer(SMOLLM2)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    return str(root / "tiny")


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_message(args: list, worker_pid: int | None = None) -> tuple[float, float]:
    """(wall s, CPU s) of one message in a fresh process (plus the worker's CPU during it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_before = _cpu_of(worker_pid) if worker_pid else 0.0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env, check=True, timeout=1800)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu + (_cpu_of(worker_pid) - worker_before if worker_pid else 0.0)


def main() -> None:
    args = base_parser(__doc__).parse_args()
    repeats = 1 if args.quick else args.repeats
    data = os.environ.get("FEDKSEED_DATA_ROOT", str(SHARED_DATA))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tiny_model(root) if args.quick else SMOLLM2
        overrides = {
            "model.model": model, "method": "fedkseed", "data.dataset": "ni", "data.data_root": data,
            "data.max_length": 128, "fed.num_seeds": 64, "fed.local_steps": 3, "fed.progress": False,
        }  # fmt: skip
        rc = {"overrides": json.dumps(overrides)}
        sync = {"target": 0, "first": 1, "downlinks": [], "sync": "none"}  # round 1 starts from theta_0
        req = {"sync": sync, "train": {"round": 1, "client": 0}}
        fresh = {"partition-id": 0, "num-partitions": 1, "worker": False, "state-dir": str(root / "fresh")}
        warm = {"partition-id": 0, "num-partitions": 1, "state-dir": str(root / "warm")}
        me = os.getpid()
        run_message(["train", rc, warm, req, me])  # starts the worker (untimed: once per node)
        worker = int((root / "warm" / "worker.pid").read_text())
        times: dict[str, list[tuple[float, float]]] = {"fresh_process": [], "node_worker": []}
        try:
            for _ in range(repeats):  # interleaved: both see the same load
                times["fresh_process"].append(run_message(["train", rc, fresh, req, me]))
                times["node_worker"].append(run_message(["train", rc, warm, req, me], worker))
        finally:
            os.kill(worker, signal.SIGTERM)
    wall = {k: median([w for w, _ in v]) for k, v in times.items()}
    cpu = {k: median([c for _, c in v]) for k, v in times.items()}
    emit(
        benchmark="flower_message", machine=machine(), load_avg_1m=os.getloadavg()[0],
        model="tiny random Llama" if args.quick else SMOLLM2, repeats=repeats,
        wall_s={k: round(v, 2) for k, v in wall.items()}, cpu_s={k: round(v, 2) for k, v in cpu.items()},
        fresh_over_worker_wall=round(wall["fresh_process"] / wall["node_worker"], 1),
        fresh_over_worker_cpu=round(cpu["fresh_process"] / cpu["node_worker"], 1),
    )  # fmt: skip


if __name__ == "__main__":
    main()
