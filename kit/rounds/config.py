"""The `fed` flags split per concern, checked with errors naming the flag; one source for both runtimes.

    config = FedConfig.from_flags({"fraction": 0.1, "local_steps": 3})   # a recipe's `fed:` mapping

The concerns: the methods' federation settings (`kit.methods.FedSettings`), client sampling
(`fraction`), faults (`kit.federation.faults.FaultModel`), evaluation (`EvalConfig`), differential
privacy (`kit.privacy.PrivacyConfig`), and two
Lightning-only runtime knobs (`snapshot`, `progress`). Lightning's `fed` group (kit/loop.py) and a
Flower recipe (kit/deploy/recipe.py) both build a `FedConfig`; each dataclass's defaults are the
flags' defaults (`FLAG_DEFAULTS`), and the CLI's signature is tested against them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, fields

from kit.federation.faults import FaultModel
from kit.methods.base import FedSettings
from kit.privacy.config import PrivacyConfig

SUITES = ("ni", "dolly")


@dataclass(frozen=True)
class EvalConfig:
    """When and how the global model is evaluated."""

    eval_every: int = 1
    """eval loss every n rounds (0: only before training and after the last round)."""
    eval_batch_size: int = 8
    """batch size of the eval-loss passes."""
    rouge_every: int = 0
    """zero-shot Rouge-L every n rounds (0: only after the last round, if `rouge_at_end`)."""
    rouge_at_end: bool = True
    """zero-shot Rouge-L of the final global model (greedy, 128 new tokens)."""
    rouge_at_start: bool = False
    """also of the base model before training, on the same examples (`rougeL_before` in summary.json)."""
    rouge_suites: list[str] | None = None
    """suites for Rouge-L, "ni" and/or "dolly" (default: the run's own dataset)."""
    rouge_limit: int | None = None
    """at most this many examples per suite (default: the run's whole held-out set)."""

    def __post_init__(self) -> None:
        if self.eval_every < 0 or self.rouge_every < 0:
            raise ValueError("--fed.eval_every and --fed.rouge_every must be >= 0")
        if self.eval_batch_size < 1:
            raise ValueError(f"--fed.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.rouge_suites is not None and not set(self.rouge_suites) <= set(SUITES):
            raise ValueError(f"--fed.rouge_suites must name 'ni' and/or 'dolly', got {self.rouge_suites}")

    def loss_due(self, server_round: int, rounds: int) -> bool:
        """The eval loss is measured after `server_round` (of `rounds`; round 0: before training)."""
        every = self.eval_every
        return server_round in (0, rounds) or bool(every and server_round % every == 0)

    def rouge_due(self, server_round: int, rounds: int) -> bool:
        """Rouge-L is measured after `server_round`."""
        every = self.rouge_every
        return (server_round == rounds and self.rouge_at_end) or bool(every and server_round % every == 0)


@dataclass(frozen=True)
class FedConfig:
    """Every `fed` flag, grouped by concern."""

    settings: FedSettings
    fraction: float
    faults: FaultModel
    eval: EvalConfig
    snapshot: str = "auto"
    progress: bool = True
    local_epochs: int | None = None
    """first-order methods: whole passes over a client's data per round (null: `local_steps`)."""
    privacy: PrivacyConfig = PrivacyConfig()
    """client-level differential privacy of the uplinks (`dp_*` flags, kit/privacy)."""

    def __post_init__(self) -> None:
        if self.privacy.dp_mode == "central" and self.settings.aggregation != "mean":
            raise ValueError(
                f"--fed.dp_mode central bounds each client's pull on the mean; --fed.aggregation "
                f"{self.settings.aggregation} has another sensitivity: use --fed.aggregation mean "
                "(or --fed.dp_mode local)"
            )
        if self.local_epochs is not None and self.local_epochs < 1:
            raise ValueError(
                f"--fed.local_epochs must be >= 1 or null (use --fed.local_steps), got {self.local_epochs}"
            )
        if not 0 < self.fraction <= 1:
            raise ValueError(f"--fed.fraction must be in (0, 1], got {self.fraction}")
        if self.settings.local_steps < 1 or self.settings.num_seeds < 1:
            raise ValueError("--fed.local_steps and --fed.num_seeds must be >= 1")
        if self.snapshot not in ("auto", "memory", "disk"):
            raise ValueError(f"--fed.snapshot must be auto, memory or disk, got {self.snapshot!r}")

    @classmethod
    def from_flags(cls, flags: Mapping) -> FedConfig:
        """The config of the flat `fed` flags (unset ones take their defaults; unknown ones refused)."""
        unknown = sorted(set(flags) - set(FLAG_DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown fed flag(s) {', '.join(unknown)}: fix --fed.* (see fedkseed fit --help)"
            )
        f = {**FLAG_DEFAULTS, **flags}
        pick = lambda kind: kind(**{x.name: f[x.name] for x in fields(kind)})  # noqa: E731
        return cls(
            pick(FedSettings),
            f["fraction"],
            pick(FaultModel),
            pick(EvalConfig),
            f["snapshot"],
            f["progress"],
            f["local_epochs"],
            pick(PrivacyConfig),
        )


def _field_defaults(kind) -> dict:
    return {x.name: x.default for x in fields(kind)}


FLAG_DEFAULTS: dict = {
    **_field_defaults(FedSettings),
    "fraction": 0.05,
    **_field_defaults(FaultModel),
    **_field_defaults(EvalConfig),
    **_field_defaults(PrivacyConfig),
    "snapshot": "auto",
    "progress": True,
    "local_epochs": None,
    # collapse detection (kit.divergence): Lightning's loop watches the losses
    "divergence_factor": 2.0,
    "stop_on_divergence": False,
}


def init_defaults(cls) -> dict:
    """The keyword arguments of `cls.__init__` with their defaults (a class's CLI flags)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
