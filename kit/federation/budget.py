"""Each client's local budget in a round: tau steps (ZO methods) or whole passes over its data (first-order).

The paper and the authors' code give the two families different budgets: FedKSeed, FedKSeed-Pro and FedZO take
tau local steps of batch 1 (`fed.local_steps`, paper 200); the first-order baselines (FedIT, FedIT-SGD,
FedPTuning, FedPrompt, and the kit's FedAvg) train one local epoch (`fed.local_epochs`), as zhenqincn/FedHDS
does: `client.py` runs `local_step * len(train_loader)` steps under `--batch_or_epoch epoch`, a
`DataLoader(batch_size, shuffle=True)` whose last batch is short, so a pass is ceil(n / batch size) steps.
DeComFL and FeedSign, ZO methods whose seeds are per step, take tau steps too.
This module is the one place that decides a client's step count; the loop and the datamodule follow it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# the ZO methods: their budget is always `fed.local_steps` (their seed choices and FedKSeed's per-round
# weight decay are functions of tau, the same for every client); Ferret too: its authors count local batches
# (allen4747/Ferret client.py, --batch_or_epoch batch; scripts/ferret.sh: 40 batches, one SGD step per 4)
STEP_METHODS = frozenset({"fedkseed", "fedkseed-pro", "fedzo", "decomfl", "feedsign", "ferret"})


@dataclass(frozen=True)
class LocalBudget:
    """A client's local work per round: `value` steps, or `value` whole passes over its examples."""

    unit: Literal["steps", "epochs"]
    value: int

    def __post_init__(self) -> None:
        if self.unit not in ("steps", "epochs") or self.value < 1:
            raise ValueError(f"a local budget is >= 1 steps or epochs, got {self.value} {self.unit}")

    @property
    def whole_passes(self) -> bool:
        """Whether a client's batches follow pass boundaries (the last batch of a pass may be short)."""
        return self.unit == "epochs"

    def to_dict(self) -> dict:
        return {"unit": self.unit, "value": self.value}


def local_budget(method: str, local_steps: int, local_epochs: int | None) -> LocalBudget:
    """The budget of `method`: ZO methods take `local_steps`; first-order methods take `local_epochs`
    when it is set (the paper's terms: 1), else `local_steps` (an equal-step comparison)."""
    if local_epochs is not None and method not in STEP_METHODS:
        return LocalBudget("epochs", local_epochs)
    return LocalBudget("steps", local_steps)


def client_steps(num_examples: int, batch_size: int, budget: LocalBudget) -> int:
    """Local steps of a client holding `num_examples` examples, at `batch_size` examples per step."""
    if num_examples < 1 or batch_size < 1:
        raise ValueError(f"a client needs >= 1 example and batch size >= 1, got {num_examples}, {batch_size}")
    if budget.unit == "steps":
        return budget.value
    return budget.value * -(-num_examples // batch_size)


def process_plan(
    steps: Sequence[tuple[int, int]], rank: int, world_size: int, idle: int
) -> list[tuple[int, int]]:
    """Process `rank`'s (client, steps) entries of a round: its share `steps[rank::world_size]`, then one
    `idle` entry padding it to the busiest process's step count (processes step in lockstep).

    Every process computes every share from the same plan, so the padding needs no communication.
    A round with no step anywhere still gets one idle step (a Trainer epoch needs a batch).
    """
    totals = [sum(n for _, n in steps[r::world_size]) for r in range(world_size)]
    plan = [(int(c), int(n)) for c, n in steps[rank::world_size]]
    padding = max(max(totals), 1) - totals[rank]
    return plan + [(idle, padding)] * (padding > 0)
