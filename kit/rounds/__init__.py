"""The round core: one federated round, whatever runs it (Lightning's callback or Flower's strategy).

    plan = plan_round(fed, faults, rnd, num_clients)            # sampling, faults, each client's steps
    result = train_client(method, rnd, client, steps, batches, loss_fn, saved_global)   # on a client
    outcome = aggregate_round(method, plan, results, num_samples)  # screening + the server rule
    metrics = round_metrics(plan, results, outcome, method_metrics)  # `train/loss`, `fed/...`
    facts = run_facts(...)                                      # summary.json's run description

No Lightning or Flower import here: the runtimes move the bytes and call these in the same order
(kit/loop.py, kit/deploy/strategy.py + kit/deploy/replica.py), so the same recipe and seed give the
same numbers, records and `summary.json` under both.
"""

from kit.rounds.client import ClientResult, ClientTally, train_client
from kit.rounds.plan import RoundPlan, plan_round
from kit.rounds.server import RoundOutcome, aggregate_round, round_metrics
from kit.rounds.state import prepare_model, run_facts

__all__ = [
    "ClientResult",
    "ClientTally",
    "RoundOutcome",
    "RoundPlan",
    "aggregate_round",
    "plan_round",
    "prepare_model",
    "round_metrics",
    "run_facts",
    "train_client",
]
