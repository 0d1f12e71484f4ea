"""Rebuild a run's global model from its checkpoint, for any method and either runtime.

    from kit.rebuild import load_run_model
    model, tokenizer = load_run_model("runs/quickstart")

FedKSeed's checkpoint holds the seed history, not the weights: theta_0 replayed through every
round's G reproduces the trained global weights bit for bit. The baselines' checkpoints hold their
global shared parameters (adapters, prompt encoders or all weights). The checkpoint records theta_0's
identity and z's definition: a different base model or z is refused before replay (z is drawn as
recorded, whatever this device's default backend), and the rebuilt weights are checked against the
digest recorded for the checkpoint's round (`--ckpt` too), or `summary.json`'s for older runs.
A method whose history is its downlinks also rebuilds any earlier round (`at_round`, `eval --round`): θ₀
replayed through that many rounds, checked against that round's digest.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kit.atomic import load_verified
from kit.checkpoint import LOOP_STATE_KEY, load_checkpoint
from kit.identity import check_rebuilt
from kit.methods import build_method
from kit.models import load_model, load_tokenizer
from kit.module import FedKSeedModule
from kit.rounds.config import FLAG_DEFAULTS, FedConfig, init_defaults
from kit.rounds.run import FLOWER_CHECKPOINT
from kit.rounds.state import prepare_model, restore_at_round, restore_global
from kit.zo.master import hp_master_dtype


def _checkpoint(run_dir: Path, checkpoint: str | Path | None) -> Path:
    """The checkpoint to read: `checkpoint`, else Lightning's last.ckpt, else a Flower server's server.pt."""
    if checkpoint:
        return Path(checkpoint)
    last = run_dir / "checkpoints" / "last.ckpt"
    flower = run_dir / "checkpoints" / FLOWER_CHECKPOINT
    return flower if not last.is_file() and flower.is_file() else last


def read_run(run_dir: str | Path, checkpoint: str | Path | None = None):
    """(module hyperparameters, federation settings, the run state, checkpoint path) of a Lightning or
    a Flower run directory (the same run state, `kit.rounds.state.checkpoint_state`)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    ckpt_path = _checkpoint(run_dir, checkpoint)
    for path, what in ((config_path, "resolved config"), (ckpt_path, "checkpoint")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a fedkseed run directory with a {what}?")
    config = yaml.safe_load(config_path.read_text())
    hp = {**init_defaults(FedKSeedModule), **config["model"]}
    hp["method"] = config.get("method", hp["method"])
    fed = FedConfig.from_flags({k: v for k, v in config["fed"].items() if k in FLAG_DEFAULTS})
    if ckpt_path.name == FLOWER_CHECKPOINT:
        fix = "restore it from a copy"
        state = load_verified(ckpt_path, "--ckpt", fix)
    else:
        state = load_checkpoint(ckpt_path, flag="--ckpt")["callbacks"][LOOP_STATE_KEY]
    return hp, fed.settings, state, ckpt_path


def load_run_model(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    at_round: int | None = None,
):
    """(model, tokenizer) with the global weights of `run_dir`'s checkpoint (default: the last), or of an
    earlier round `at_round` of it (methods whose history is their downlinks: FedKSeed, DeComFL, ...)."""
    run_dir = Path(run_dir)
    hp, settings, state, ckpt_path = read_run(run_dir, checkpoint)
    method = build_method(hp["method"], hp, settings)
    where = f"checkpoint {ckpt_path}"
    model, _ = prepare_model(
        method, load_model(hp["model"], dtype=hp_master_dtype(hp), device=device), hp["model"], state, where
    )
    try:
        if at_round is None:
            checked = restore_global(method, state["method_state"], model, state, where)
        else:
            checked = restore_at_round(method, state["method_state"], model, state, at_round, where)
    finally:
        method.close()
    final = at_round in (None, state["rounds_done"])
    if not checked and final and checkpoint is None and (run_dir / "summary.json").is_file():  # no digests
        summary = json.loads((run_dir / "summary.json").read_text())
        expected = summary.get("global_weights_sha256")
        if expected and summary["rounds"] == state["rounds_done"]:
            check_rebuilt(expected, model, str(run_dir))
    return model, load_tokenizer(hp["model"])
