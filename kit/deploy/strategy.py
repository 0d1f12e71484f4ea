"""The server's round on Flower: a thin `Strategy` over the round core (kit/rounds), any method.

    strategy = FedKSeedStrategy(load_recipe(["recipes/quickstart.yaml"]), run_dir="runs/flower")
    strategy.run(grid)            # inside a ServerApp's main (kit/deploy/server_app.py)

Per round r (Flower's vocabulary; the round itself is `kit.rounds`, as under Lightning):
  0) discover nodes not seen yet (`kit.deploy.nodes`); before round 1, one node reports the eval loss;
  1) configure_train: the round's plan (sampling, simulated faults, each client's steps); each client
     goes to the node hosting it with what that node needs to sync to round r-1 (the method's
     downlinks to replay, or the global state: `Method.replay_cost`, `kit.federation.catchup`);
  2) aggregate_train: the uplinks that came within `round_timeout` are screened and aggregated by the
     method in client-id order; the server applies the downlink (`ServerRun.close_round`);
  3) configure_evaluate / aggregate_evaluate (every `fed.eval_every` rounds and after the last): one
     node syncs to round r and reports the held-out eval loss;
  4) checkpoint (atomic), metrics.csv and summary.json (the Lightning run's schema plus Flower's own
     runtime fields: nodes, per-round syncs and bytes on the wire).
The server holds the global model, never client data: sample counts arrive with the uplinks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from kit.atomic import load_verified
from kit.deploy import secagg
from kit.deploy.messages import EvalReply, SyncRequest, TrainReply, TrainRequest
from kit.deploy.nodes import Nodes
from kit.deploy.recipe import Recipe
from kit.deploy.records import round_record, runtime_fields, save_state, write_config
from kit.deploy.wire import flower_bytes
from kit.errors import UsageError
from kit.federation.budget import local_budget
from kit.methods import build_method
from kit.models import load_model
from kit.rounds import ClientResult
from kit.rounds.privacy import attach_dp
from kit.rounds.run import FLOWER_CHECKPOINT, ServerRun, write_metrics_csv
from kit.rounds.state import check_method
from kit.rounds.sync import CatchUpCosts, plan_sync
from kit.zo.master import hp_master_dtype


class FedKSeedStrategy(Strategy):
    """A federated method on Flower for `recipe`; the run directory holds the checkpoint, metrics.csv
    and summary.json.

    Args:
        recipe: the resolved recipe (`kit.deploy.recipe`).
        run_dir: where `checkpoints/server.pt`, `metrics.csv` and `summary.json` go; an existing
            checkpoint resumes.
        round_timeout: seconds a round waits for its uplinks (a node that is slower is left out).
        replay_rate, bandwidth, merged_after: the catch-up cost model (`kit.federation.catchup`).
        check_replicas: nodes report their replica's digest after syncing; the server compares it
            with its own model's (bit-for-bit sync, checked every round).
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path,
        round_timeout: float = 600.0,
        replay_rate: float = 5e8,
        bandwidth: float = 12.5e6,
        merged_after: int = 0,
        check_replicas: bool = True,
        secagg: bool = False,
    ) -> None:
        self.recipe, self.run_dir, self.check_replicas = recipe, Path(run_dir), check_replicas
        self.secagg = secagg  # FedKSeed's uplinks masked pairwise: the server sees only their sum
        self.nodes = Nodes(round_timeout)
        self.costs = CatchUpCosts(replay_rate, bandwidth, merged_after)
        self.ckpt = self.run_dir / "checkpoints" / FLOWER_CHECKPOINT
        self.method = method = build_method(recipe.method, recipe.hp, recipe.settings)
        state = self._load_checkpoint() if self.ckpt.is_file() else None
        net = load_model(recipe.hp["model"], dtype=hp_master_dtype(recipe.hp), device="cpu")
        fed = recipe.settings, recipe.faults, recipe.fed["fraction"]
        self.run_state = ServerRun(method, net, recipe.hp["model"], *fed, state, str(self.ckpt))
        self.history: list[dict] = json.loads(state["flower_history"]) if state else []  # Flower's records
        self.rows: list[dict] = json.loads(state["rows"]) if state else []  # metrics.csv
        self.resumed_at = [*json.loads(state["resumed_at"]), state["rounds_done"]] if state else []
        self._round: dict = {}

    @property
    def rounds_done(self) -> int:
        return self.run_state.rounds_done

    def discover(self, grid: Grid) -> None:
        self.nodes.discover(grid)

    def owner(self, client_id: int) -> int | None:
        return self.nodes.owner(client_id)

    @property
    def synced(self) -> dict[int, int]:
        return self.nodes.synced

    # -- 1) configure_train ------------------------------------------------------------------------
    def _sync_records(self, node: int, target: int) -> tuple[RecordDict, int]:
        """What `node` needs to reach round `target` (`kit.rounds.sync`) as records; its payload bytes."""
        sync = plan_sync(self.method, self.synced.get(node, 0), target, self.costs)
        request = SyncRequest(sync.target, sync.first, sync.kind, sync.downlinks)
        records = RecordDict({"sync": ConfigRecord(request.values())})
        if sync.weights is not None:
            records["weights"] = ArrayRecord(list(sync.weights))
        return records, sync.payload_bytes

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.nodes.num_clients is None:
            raise RuntimeError("no node answered the discovery query: are SuperNodes connected?")
        if self.method.dp is None:  # the run's DP mechanism, once the nodes told the number of clients
            fed = self.recipe.config
            shape = self.nodes.num_clients, fed.fraction, self.recipe.rounds
            attach_dp(self.method, fed.privacy, fed.settings.seed, *shape)
        plan = self.run_state.plan(server_round, self.nodes.num_clients)
        self._round = {"plan": plan, "unhosted": [], "down_payload": [], "down_flower": []}
        messages, masked = [], self._secagg_setup(grid, plan) if self.secagg else None
        for c, steps in plan.steps:
            node = self.owner(c)
            if node is None or (masked is not None and c not in masked):
                self._round["unhosted"].append(c)
                continue
            content, payload = self._sync_records(node, server_round - 1)
            content["train"] = ConfigRecord(TrainRequest(server_round, c, steps).values())
            if masked is not None:
                content[secagg.RECORD] = self._round["secagg"].train_record(c, masked)
            msg = Message(
                content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(server_round)
            )
            self._round["down_payload"].append(payload)
            self._round["down_flower"].append(flower_bytes(msg))
            messages.append(msg)
        return messages

    def _secagg_setup(self, grid: Grid, plan) -> list[int]:
        """Secure aggregation's keys and shares for the clients that train this round (kit/deploy/secagg.py);
        returns those that completed both (the masked clients)."""
        why = secagg.refusal(self.method)
        if why:
            raise UsageError(f"run config secagg=true: {why}")
        clients_of: dict[int, list[int]] = {}
        for c, _ in plan.steps:
            if (node := self.owner(c)) is not None:
                clients_of.setdefault(node, []).append(c)
        server = secagg.SecAggServer(plan.round, clients_of, lambda msgs: self.nodes.exchange(grid, msgs)[0])
        self._round["secagg"] = server
        self._round["masked"] = masked = server.setup()
        return masked

    # -- 2) aggregate_train ------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The uplinks that arrived go through the round core (screening, the method's server rule)."""
        plan, errors, ups = self._round["plan"], 0, []
        for reply in replies:
            if reply.has_error():
                errors += 1
                continue
            up = TrainReply.from_values(dict(reply.content["uplink"]))
            ups.append((reply.metadata.src_node_id, flower_bytes(reply), up))
        ups.sort(key=lambda u: u[2].client)  # client order, whatever order the replies arrived in
        if plan.steps and not ups:
            raise RuntimeError(
                f"round {server_round}: no uplink within {self.nodes.round_timeout} s ({errors} error "
                "replies); raise round-timeout or check the SuperNodes"
            )
        results = [
            ClientResult(u.client, u.payload, u.loss_sum, u.steps, u.skipped, u.num_examples) for *_, u in ups
        ]
        before = self.run_state.digest  # the nodes synced to round r-1 before training
        mismatched = sum(u.sync.replica_digest != before for *_, u in ups) if self.check_replicas else 0
        samples = {r.client: r.num_examples for r in results}  # the clients' own counts
        secure = None
        if self.secagg:  # the server learns the sum of the masked vectors that arrived, no single one
            secure = self._round["secagg"].outcome(self.method, results, self._round["masked"])
        metrics, outcome = self.run_state.close_round(plan, results, samples, outcome=secure)
        self._round.update(metrics=metrics, results=results, outcome=outcome)
        self._round["answered"] = {node for node, *_ in ups}
        for node, _, u in ups:
            self.synced[node] = max(self.synced.get(node, 0), u.sync.replica_round)
        extra = {
            **self._round,
            "round_timeout_s": self.nodes.round_timeout,
            "replica_digest_mismatches": mismatched,
        }
        self.history.append(round_record(plan, ups, outcome, errors, extra))
        return None, MetricRecord({k: v for k, v in metrics.items() if not isinstance(v, str)})

    # -- 3) evaluation -----------------------------------------------------------------------------
    def _eval_round(self, server_round: int) -> bool:
        return self.recipe.config.eval.loss_due(server_round, self.recipe.rounds)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self._eval_round(server_round) or not self.nodes.parts:
            return []
        # a node that answered this round (not one that missed the deadline), best one already synced
        answered = self._round.get("answered", set())
        node = min(
            self.nodes.parts,
            key=lambda n: (n not in answered, self.synced.get(n, 0) < server_round - 1, self.nodes.parts[n]),
        )
        content, _ = self._sync_records(node, server_round)
        kind = MessageType.EVALUATE
        return [Message(content, dst_node_id=node, message_type=kind, group_id=str(server_round))]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        for reply in replies:
            if reply.has_error():
                continue
            res = EvalReply.from_values(dict(reply.content["eval"]))
            self.synced[reply.metadata.src_node_id] = res.sync.replica_round
            if self.history and server_round:
                self.history[-1]["eval_replica_digest_ok"] = res.sync.replica_digest == self.run_state.digest
            return MetricRecord({"eval/loss": res.eval_loss})
        return None

    def _evaluate(self, grid: Grid, server_round: int) -> float | None:
        asks = list(self.configure_evaluate(server_round, ArrayRecord(), ConfigRecord(), grid))
        record = self.aggregate_evaluate(server_round, self.nodes.exchange(grid, asks)[0]) if asks else None
        return None if record is None else float(record["eval/loss"])

    def summary(self) -> None:
        print(f"[kit] {self.recipe.method} on Flower, {self.recipe.rounds} rounds", flush=True)

    # -- 4) the rounds, the checkpoint and the report ----------------------------------------------
    def run(self, grid: Grid, stop_after: int | None = None) -> dict:
        """Rounds rounds_done+1..rounds (or up to `stop_after`), then summary.json; returns it."""
        self.summary()
        reporter = self.run_state.reporter
        if self.rounds_done == 0 and reporter.eval_loss_before is None:
            self.discover(grid)
            reporter.eval_loss_before = self._evaluate(grid, 0)
            self.rows = [{"round": 0, "eval/loss": reporter.eval_loss_before}]
        last = self.recipe.rounds if stop_after is None else min(stop_after, self.recipe.rounds)
        for rnd in range(self.rounds_done + 1, last + 1):
            t0 = time.perf_counter()
            self.discover(grid)
            train = self.configure_train(rnd, ArrayRecord(), ConfigRecord(), grid)
            t1 = time.perf_counter()
            replies, late, failed = self.nodes.exchange(grid, train)
            self._round["deadline_missed"] = sorted(int(m.content["train"]["client"]) for m in late)
            self._round["failed"] = sorted(int(m.content["train"]["client"]) for m in failed)
            self._round["train_wait_s"] = time.perf_counter() - t1
            self.aggregate_train(rnd, replies)
            metrics = {**self._round["metrics"], "time/round_s": time.perf_counter() - t0}
            if self._eval_round(rnd):
                metrics["eval/loss"] = self._evaluate(grid, rnd)
            self.run_state.finish_metrics(metrics, self._round["results"], self._round["outcome"])
            self.rows.append({**metrics, "round": rnd})
            self.history[-1]["time_s"] = time.perf_counter() - t0
            self.save_checkpoint()
            self.write_summary()  # progress: summary.json after every round, `finished` after the last
            print(f"[kit] round {rnd}: {json.dumps(self.history[-1])}", flush=True)
        return self.write_summary()

    def save_checkpoint(self) -> None:
        """The run state and Flower's records, written atomically."""
        flower = {"flower_history": self.history, "rows": self.rows, "resumed_at": self.resumed_at}
        save_state(
            self.ckpt, {**self.run_state.state_dict(), **{k: json.dumps(v) for k, v in flower.items()}}
        )

    def _load_checkpoint(self) -> dict:
        fix = f"restore it from a copy, or move {self.run_dir} away to start the federation afresh"
        state = load_verified(self.ckpt, "server checkpoint", fix)
        if "flower_history" not in state:
            raise ValueError(f"{self.ckpt} was written by an older kit: {fix}")
        check_method(state, self.method, str(self.ckpt))
        return state

    def write_summary(self) -> dict:
        """summary.json (a Lightning run's schema plus Flower's runtime fields), metrics.csv, config.yaml."""
        run = self.run_state
        facts = run.facts(self.nodes.num_clients or 0, self.nodes.dropped_examples, "flower")
        facts.update(runtime_fields(self.history, self.nodes.parts, self.resumed_at))
        recipe = self.recipe
        budget = local_budget(recipe.method, recipe.settings.local_steps, recipe.config.local_epochs)
        facts["local_budget"] = budget.to_dict()
        write_metrics_csv(self.run_dir / "metrics.csv", self.rows)
        write_config(self.run_dir, self.recipe)
        return run.write_summary(self.run_dir / "summary.json", facts, run.rounds_done == self.recipe.rounds)
