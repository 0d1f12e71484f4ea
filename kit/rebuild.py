"""Rebuild a run's global model from its checkpoint, for any method.

    from kit.rebuild import load_run_model
    model, tokenizer = load_run_model("runs/quickstart")

FedKSeed's checkpoint holds the seed history, not the weights: theta_0 replayed through every
round's G reproduces the trained global weights bit for bit. The baselines' checkpoints hold their
global shared parameters (adapters, prompt encoders or all weights). Either way the result is
checked against `summary.json`'s `global_weights_sha256` when the checkpoint is the run's last.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import yaml

from kit.loop import FederatedLoop
from kit.methods import build_method
from kit.models import load_model, load_tokenizer
from kit.module import FedKSeedModule
from kit.reporting import weights_digest


def load_run_model(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "cpu"):
    """(model, tokenizer) with the global weights of `run_dir`'s checkpoint (default: last.ckpt)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.ckpt"
    for path, what in ((config_path, "resolved config"), (ckpt_path, "checkpoint")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a fedkseed run directory with a {what}?")
    config = yaml.safe_load(config_path.read_text())
    hp = {**_defaults(FedKSeedModule), **config["model"]}
    hp["method"] = config.get("method", hp["method"])
    loop = FederatedLoop(**{k: v for k, v in config["fed"].items() if k in _defaults(FederatedLoop)})
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["callbacks"][
        FederatedLoop.__qualname__
    ]
    method = build_method(hp["method"], hp, loop.settings)
    model = method.prepare(load_model(hp["model"], device=device))
    method.load_state_dict(state["method_state"])
    method.restore_global()
    method.close()
    summary_path = run_dir / "summary.json"
    if checkpoint is None and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        expected = summary.get("global_weights_sha256")
        if expected and summary["rounds"] == state["rounds_done"] and weights_digest(model) != expected:
            raise RuntimeError(
                f"rebuilt weights of {run_dir} differ from the trained ones: was the run made with another "
                "z backend, device type or kit version?"
            )
    return model, load_tokenizer(hp["model"])


def _defaults(cls) -> dict:
    """The keyword arguments of `cls.__init__` with their defaults."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
