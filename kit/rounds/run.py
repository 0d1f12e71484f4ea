"""The server's run state, the same under every runtime: the method on its model, the rounds done,
the per-round digests and history, the checkpoint's content and `summary.json`.

    run = ServerRun(method, net, model_id, settings, faults, fraction, recorded=state)   # resumes
    plan = run.plan(rnd, num_clients)
    metrics, outcome = run.close_round(plan, results, num_samples)   # aggregate, apply, digest, record
    run.finish_metrics(metrics, results, outcome)                     # after eval: into the history

Lightning's loop and Flower's strategy each hold one and add only their runtime's glue (where the
global parameters wait between clients, how uplinks arrive, who evaluates).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from kit.atomic import fsync_replace
from kit.federation.faults import FaultModel
from kit.identity import weights_digest
from kit.methods.base import FedSettings, Method
from kit.reporting import RunReporter
from kit.rounds.client import ClientResult
from kit.rounds.plan import RoundPlan, plan_round
from kit.rounds.server import RoundOutcome, aggregate_round, round_metrics
from kit.rounds.state import checkpoint_state, prepare_model, restore_global, run_facts
from kit.zo.master import master_dtype_of

FLOWER_CHECKPOINT = (
    "server.pt"  # a Flower server's checkpoint in RUN_DIR/checkpoints (Lightning's: last.ckpt)
)


class ServerRun:
    """The global model and the run's record; `recorded` (a checkpoint's state) resumes it, checked."""

    def __init__(
        self,
        method: Method,
        net: torch.nn.Module,
        model_id: str,
        settings: FedSettings,
        faults: FaultModel,
        fraction: float,
        recorded: Mapping | None = None,
        where: str = "the checkpoint",
    ) -> None:
        self.method, self.settings, self.faults, self.fraction = method, settings, faults, fraction
        self.master_dtype = master_dtype_of(net)  # the trained weights' dtype (--model.master_dtype)
        self.net, self.theta0 = prepare_model(method, net, model_id, recorded, where)
        self.reporter = RunReporter()
        self.rounds_done, self.round_digests = 0, []
        if recorded is not None:
            self.rounds_done = int(recorded["rounds_done"])
            self.round_digests = list(recorded.get("round_digests", []))
            self.reporter.load_state_dict(recorded)
            restore_global(method, recorded["method_state"], self.net, recorded, where)
        self.digest = weights_digest(self.net)

    def plan(self, server_round: int, num_clients: int, local_steps=None) -> RoundPlan:
        """Round `server_round`'s plan (`local_steps`: default tau, or a function of the client)."""
        steps = self.settings.local_steps if local_steps is None else local_steps
        return plan_round(self.settings.seed, server_round, num_clients, self.fraction, self.faults, steps)

    def close_round(
        self,
        plan: RoundPlan,
        results: Sequence[ClientResult],
        num_samples: Mapping[int, int],
        restore: Callable[[], None] | None = None,
        save: Callable[[], None] | None = None,
        outcome: RoundOutcome | None = None,
    ) -> tuple[dict, RoundOutcome]:
        """Aggregate the round's uplinks (arrival order), apply the downlink to the global model
        (`restore` puts the global values back first, `save` keeps them after), record its digest
        and, under DP, the accountant's epsilon so far (`dp/epsilon`); returns the round's metrics so
        far and the outcome."""
        if restore is not None:  # the global values first: central DP's server rule reads them
            restore()
        if outcome is None:  # (secure aggregation brings its outcome: the server saw only a sum)
            outcome = aggregate_round(self.method, plan, results, num_samples)
        method_metrics = self.method.apply_downlink(plan.round, outcome.downlink)
        if save is not None:
            save()
        self.rounds_done = plan.round
        self.digest = weights_digest(self.net)
        self.round_digests.append(self.digest)
        metrics = {
            **round_metrics(results, outcome, method_metrics),
            **self.reporter.record_faults(plan.round, plan.faults, outcome.screening),
        }
        if self.method.dp is not None:
            metrics["dp/epsilon"] = self.method.dp.epsilon(plan.round)
        return metrics, outcome

    def finish_metrics(self, metrics: dict, results: Sequence[ClientResult], outcome: RoundOutcome) -> None:
        """Put the round's metrics (with its eval, when any) into the history."""
        skipped = sum(r.skipped for r in results)
        self.reporter.record_round(metrics, [len(r.wire) for r in results], len(outcome.downlink), skipped)

    def state_dict(self) -> dict:
        """The checkpoint: the method's global state, θ₀, z, digests and the history."""
        state = checkpoint_state(self.method, self.rounds_done, self.theta0, self.round_digests)
        return {**state, "master_dtype": self.master_dtype, **self.reporter.state_dict()}

    def facts(self, num_clients: int, dropped_examples: Mapping, runtime: str) -> dict:
        dp = self.method.dp
        privacy = dp.facts(self.rounds_done) if dp is not None else None
        facts = self._facts(num_clients, dropped_examples, runtime)
        return {**facts, "master_dtype": self.master_dtype, "privacy": privacy}

    def _facts(self, num_clients: int, dropped_examples: Mapping, runtime: str) -> dict:
        return run_facts(
            self.method,
            self.settings,
            self.faults,
            self.rounds_done,
            self.fraction,
            num_clients,
            dropped_examples,
            self.theta0,
            runtime,
        )

    def write_summary(self, path: Path, facts: dict, final: bool) -> dict:
        return self.reporter.write_summary(path, facts, self.net if final else None)


def write_metrics_csv(path: Path, rows: Sequence[Mapping]) -> None:
    """`metrics.csv` (one row per round, the union of the keys as columns), rewritten atomically."""
    keys = sorted(set().union(*rows)) if rows else ["round"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    fsync_replace(tmp, path)
