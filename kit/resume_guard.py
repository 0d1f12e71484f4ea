"""Resume must not silently change the experiment: the requested configuration against the checkpoint's.

    changes = compare_configs(recorded, requested)          # {"model.lr": (0.001, 0.005)}
    check_resume(changes, method="fedkseed", force=False)   # UsageError naming each key, both values

A run's checkpoint records its experiment (`experiment_config`: the flattened `method`, `model.*`,
`data.*`, `fed.*`, `seed_everything`; checkpoints of older kits: their Lightning hyperparameters and
the run directory's config.yaml). On resume, any difference outside `HARMLESS` is refused in one
line; `--resume_changes true` continues deliberately under the new values, recorded in
summary.json (`config_changes`: from which round, each key's old and new value). Keys the global
model is rebuilt from (`REBUILT_FROM`) cannot change even then: the checkpoint replays its history
under them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kit.errors import UsageError

GROUPS = ("method", "model", "data", "fed", "seed_everything")  # what defines the experiment
# may change on resume: progress, evaluation cadence, logging, where things are, how z is computed
HARMLESS = frozenset(
    {
        "fed.progress",
        "fed.eval_every",
        "fed.eval_batch_size",
        "fed.rouge_every",
        "fed.rouge_at_end",
        "fed.rouge_suites",
        "fed.rouge_limit",
        "fed.snapshot",
        "fed.divergence_factor",
        "fed.stop_on_divergence",
        "data.data_root",
        "data.tokenizer",  # linked to model.model, compared there
        "model.method",  # linked to method, compared there
        "model.zo_backend",  # every backend computes the recorded z (checked on resume)
        "model.keep_z",  # memory only
    }
)
ZO_SEED_METHODS = ("fedkseed", "fedkseed-pro", "decomfl", "feedsign")
# the global model is rebuilt from theta_0 and the history under these: no resume may change them
REBUILT_FROM = {
    "*": ("method", "model.model"),
    "zo": (
        "model.lr",
        "model.weight_decay",
        "model.distribution",
        "model.zo_perturbations",
        "fed.local_steps",
        "fed.num_seeds",
        "fed.seed",
    ),
    "tensor": (
        "model.lora_r",
        "model.lora_targets",
        "model.num_virtual_tokens",
        "model.prompt_encoder_hidden_size",
    ),
}
FORCE_FLAG = "--resume_changes true"


def _plain(value: Any) -> Any:
    """A JSON-compatible copy (checkpoints load with weights_only=True)."""
    return json.loads(json.dumps(value, default=str))


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"model": {"lr": 1}} -> {"model.lr": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def experiment_config(config: Mapping) -> dict[str, Any]:
    """The experiment-defining part of a resolved `fit` config (a nested dict), flattened and plain."""
    flat = flatten({k: config[k] for k in GROUPS if k in config})
    return _plain(flat)


def recorded_config(ckpt: Mapping, ckpt_path: str | Path, loop_key: str) -> dict[str, Any]:
    """The experiment a checkpoint was made under: recorded by the loop, else (an older kit) its
    Lightning hyperparameters and the run directory's config.yaml."""
    loop = ckpt.get("callbacks", {}).get(loop_key, {})
    if loop.get("experiment"):
        return dict(loop["experiment"])
    tree: dict[str, Any] = {}
    config_yaml = Path(ckpt_path).resolve().parent.parent / "config.yaml"
    if config_yaml.is_file():
        saved = yaml.safe_load(config_yaml.read_text()) or {}
        tree.update({k: saved[k] for k in GROUPS if k in saved})
    hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    if hparams:
        tree["model"] = hparams
    return experiment_config(tree)


def compare_configs(recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> dict[str, tuple]:
    """Keys whose values differ (outside HARMLESS): key -> (recorded, requested). Keys the recording
    lacks (added by a newer kit) are not compared."""
    changes = {}
    for key in sorted(requested):
        if key in HARMLESS or key not in recorded:
            continue
        old, new = recorded[key], _plain(requested[key])
        if old != new and not _same_number(old, new):
            changes[key] = (old, new)
    return changes


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and float(a) == float(b)
    )


def _describe(changes: Mapping[str, tuple]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def check_resume(changes: Mapping[str, tuple], method: str, force: bool) -> None:
    """Refuse a resume that changes the experiment (UsageError, one line naming each key and both
    values), unless `force`; keys the global model is rebuilt from are refused even then."""
    if not changes:
        return
    kind = "zo" if method in ZO_SEED_METHODS else "tensor"
    fixed = {k: v for k, v in changes.items() if k in REBUILT_FROM["*"] + REBUILT_FROM[kind]}
    if fixed:
        raise UsageError(
            f"resuming would change {_describe(fixed)}: the checkpoint's global model is rebuilt under the "
            "recorded value(s), so they cannot change on resume; resume with them, or start a new run "
            "(another --run_dir, no --ckpt_path)"
        )
    if not force:
        raise UsageError(
            f"resuming would change the experiment: {_describe(changes)}; resume with the checkpoint's "
            f"values, or pass {FORCE_FLAG} to continue under the new ones (recorded in summary.json)"
        )


def change_record(changes: Mapping[str, tuple], rounds_done: int) -> dict:
    """The summary.json entry of a deliberate change: the first round run under the new values."""
    return {
        "from_round": rounds_done + 1,
        "changes": {k: {"old": o, "new": n} for k, (o, n) in changes.items()},
    }


def guard_resume(
    ckpt: Mapping, ckpt_path: str | Path, requested: Mapping, loop_key: str, force: bool
) -> list[dict]:
    """Check a resume's requested `fit` config (nested dict) against checkpoint `ckpt`; returns the
    run's config-change records so far (the checkpoint's, plus this resume's when forced)."""
    loop = ckpt.get("callbacks", {}).get(loop_key, {})
    past = list(loop.get("config_changes", []))
    wanted = experiment_config(requested)
    changes = compare_configs(recorded_config(ckpt, ckpt_path, loop_key), wanted)
    check_resume(changes, str(wanted.get("method", "")), force)
    return past + [change_record(changes, int(loop.get("rounds_done", 0)))] if changes else past
