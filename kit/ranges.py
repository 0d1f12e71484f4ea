"""Range checks of the command's numbers: a value out of range is a UsageError naming the flag,
the value and the allowed range (`fedkseed` prints it in one line, exit status 2).

    check_fed_ranges({"fraction": 2.0, ...})   # UsageError: --fed.fraction 2.0: must be in (0, 1]

NaN fails every check (written as `not value > 0`, never `value <= 0`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kit.errors import UsageError


def require(ok: bool, flag: str, value: Any, rule: str) -> None:
    """UsageError "--flag value: must be <rule>" unless `ok`."""
    if not ok:
        raise UsageError(f"{flag} {value}: must be {rule}; pass a value {rule}")


def check_fed_ranges(args: Mapping[str, Any]) -> None:
    """The `--fed.*` numbers (FederatedLoop's arguments) that have a range."""
    a = args
    require(0 < a["fraction"] <= 1, "--fed.fraction", a["fraction"], "in (0, 1]")
    for name in ("local_steps", "num_seeds"):
        require(a[name] >= 1, f"--fed.{name}", a[name], ">= 1")
    for name in ("eval_every", "rouge_every"):
        require(a[name] >= 0, f"--fed.{name}", a[name], ">= 0 (0: only at the end)")
    require(a["eval_batch_size"] >= 1, "--fed.eval_batch_size", a["eval_batch_size"], ">= 1")
    suites = a["rouge_suites"]
    require(
        suites is None or set(suites) <= {"ni", "dolly"}, "--fed.rouge_suites", suites, "'ni' and/or 'dolly'"
    )
    for name in ("dropout", "straggler_prob"):
        require(0 <= a[name] <= 1, f"--fed.{name}", a[name], "in [0, 1]")
    require(a["straggler_delay_s"] >= 0, "--fed.straggler_delay_s", a["straggler_delay_s"], ">= 0")
    deadline = a["deadline_s"]
    require(deadline is None or deadline >= 0, "--fed.deadline_s", deadline, ">= 0 or null (none)")
    for name in ("bias_loss_clip", "pro_temperature", "loss_range", "tensor_norm_ratio"):
        require(a[name] > 0, f"--fed.{name}", a[name], "> 0")
    factor = a["divergence_factor"]
    require(factor is None or factor > 1, "--fed.divergence_factor", factor, "> 1 or null (off)")


def check_model_ranges(args: Mapping[str, Any]) -> None:
    """The `--model.*` numbers (FedKSeedModule's arguments) that have a range."""
    a = args
    for name in ("lr", "zo_eps"):
        require(a[name] > 0, f"--model.{name}", a[name], "> 0")
    require(a["weight_decay"] >= 0, "--model.weight_decay", a["weight_decay"], ">= 0")
    require(0 <= a["momentum"] < 1, "--model.momentum", a["momentum"], "in [0, 1)")
    require(a["server_lr"] > 0, "--model.server_lr", a["server_lr"], "> 0")
    for name in ("lora_r", "num_virtual_tokens", "zo_perturbations"):
        require(a[name] >= 1, f"--model.{name}", a[name], ">= 1")
    require(a["grad_accumulation"] >= 1, "--model.grad_accumulation", a["grad_accumulation"], ">= 1")
    for name in ("lora_dropout", "prompt_encoder_dropout"):
        require(0 <= a[name] < 1, f"--model.{name}", a[name], "in [0, 1)")
