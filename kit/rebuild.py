"""Rebuild a run's global model from its checkpoint: theta_0 replayed through every round's G.

    from kit.rebuild import load_run_model
    model, tokenizer = load_run_model("runs/quickstart")

A checkpoint holds the seed history, not the weights; the exact replay reproduces the trained global
weights bit for bit (checked against `summary.json`'s `global_weights_sha256` when present).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from kit.federation.seeds import SeedPool
from kit.federation.sync import apply_scalars
from kit.loop import FederatedLoop, weights_digest
from kit.models import load_model, load_tokenizer
from kit.zo.perturb import Perturber


def load_run_model(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "cpu"):
    """(model, tokenizer) with the global weights of `run_dir`'s checkpoint (default: last.ckpt)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.ckpt"
    for path, what in ((config_path, "resolved config"), (ckpt_path, "checkpoint")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a fedkseed run directory with a {what}?")
    config = yaml.safe_load(config_path.read_text())
    zo, fed = config["model"], config["fed"]
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["callbacks"][
        FederatedLoop.__qualname__
    ]
    model = load_model(zo["model"], device=device)
    backend = zo.get("zo_backend", "auto")
    if backend == "auto":
        backend = "native" if torch.device(device).type == "cpu" else "torch"
    perturber = Perturber(list(model.parameters()), zo["distribution"], backend=backend)
    pool = SeedPool(fed["num_seeds"], fed["seed"])
    for g in state["downlinks"]:
        apply_scalars(perturber, pool, g.numpy(), zo["lr"], zo["weight_decay"])
    perturber.close()
    summary_path = run_dir / "summary.json"
    if checkpoint is None and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        expected = summary.get("global_weights_sha256")
        if expected and summary["rounds"] == len(state["downlinks"]) and weights_digest(model) != expected:
            raise RuntimeError(
                f"rebuilt weights of {run_dir} differ from the trained ones: was the run made with another "
                "z backend, device type or kit version?"
            )
    return model, load_tokenizer(zo["model"])
