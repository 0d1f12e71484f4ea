"""The server's round on Flower: FedKSeed's strategy over the kit's Method, with a checkpoint per round.

    strategy = FedKSeedStrategy(load_recipe(["recipes/quickstart.yaml"]), run_dir="runs/flower")
    strategy.run(grid)            # inside a ServerApp's main (kit/deploy/server_app.py)

Per round r (Flower's vocabulary, the same steps as `kit.loop`):
  0) discover: nodes not seen yet are asked which partitions they host and their replica's round;
  1) configure_train: sample the round's clients (seeded, as under Lightning), send each to the node
     hosting it with what that node needs to sync to round r-1 (downlinks, or the weights when the
     catch-up cost estimate says a download is cheaper);
  2) aggregate_train: screen each uplink on arrival (`_screen`, the kit's decoders), then the method
     aggregates them in client-id order into the downlink; the server applies it to its model;
  3) configure_evaluate / aggregate_evaluate (every `fed.eval_every` rounds and after the last): one
     node syncs to round r and reports the held-out eval loss;
  4) checkpoint (atomic): the method's state = the seed history; a restarted server resumes there.
A node that does not answer within `round_timeout` is left out of the round (as a dropped client).
The server holds the global model, never client data: sample counts arrive with the uplinks.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from kit.atomic import fsync_replace, load_verified
from kit.deploy.recipe import Recipe
from kit.deploy.wire import flower_bytes
from kit.federation.catchup import WEIGHTS, plan_catchup
from kit.federation.messages import Downlink, encode_downlink
from kit.federation.server import sample_clients
from kit.methods import build_method
from kit.models import load_model
from kit.reporting import weights_digest
from kit.zo.master import hp_master_dtype

QUERY = MessageType.QUERY  # which partitions a node hosts


class FedKSeedStrategy(Strategy):
    """FedKSeed(-Pro) on Flower for `recipe`; the run directory holds the checkpoint and summary.json.

    Args:
        recipe: the resolved recipe (`kit.deploy.recipe`).
        run_dir: where `checkpoints/server.pt` and `summary.json` go; an existing checkpoint resumes.
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
    ) -> None:
        if round_timeout <= 0:
            raise ValueError(f"round-timeout must be > 0 seconds, got {round_timeout}")
        self.recipe, self.run_dir = recipe, Path(run_dir)
        self.round_timeout, self.check_replicas = round_timeout, check_replicas
        self.replay_rate, self.bandwidth, self.merged_after = replay_rate, bandwidth, merged_after
        self.method = build_method(recipe.method, recipe.hp, recipe.settings)
        self.net = self.method.prepare(
            load_model(recipe.hp["model"], dtype=hp_master_dtype(recipe.hp), device="cpu")
        )
        self.num_params = sum(p.numel() for p in self.net.parameters())
        self.rounds_done = 0
        self.history: list[dict] = []
        self.resumed_at: list[int] = []  # rounds_done at each restart from the checkpoint
        self._round: dict = {}
        self.nodes: dict[int, tuple[int, int]] = {}  # node id -> (partition id, num partitions)
        self.synced: dict[int, int] = {}  # node id -> the round its replica holds (as last reported)
        self.num_clients: int | None = None
        self.ckpt = self.run_dir / "checkpoints" / "server.pt"
        if self.ckpt.is_file():
            self._load_checkpoint()
        self._digest = weights_digest(self.net)

    # -- the downlinks, the kit's own bytes --------------------------------------------------------
    def downlink_wire(self, rnd: int) -> bytes:
        """Round `rnd`'s downlink; the newest one also carries the next round's Pro probabilities."""
        probs = self.method.probs if rnd == self.rounds_done else None
        g = self.method.downlinks[rnd - 1]
        return encode_downlink(Downlink(rnd, g, probs), self.method.pool.fingerprint)

    # -- the deadline ------------------------------------------------------------------------------
    def exchange(
        self, grid: Grid, messages: Iterable[Message]
    ) -> tuple[list[Message], list[Message], list[Message]]:
        """Send `messages` and collect replies until all came or `round_timeout` passed.

        Returns (replies, unanswered, failed): a killed SuperNode looks alive to the SuperLink until
        its heartbeat expires (then the SuperLink answers for it with an error), so the deadline
        bounds the round regardless; `failed` are the messages answered by an error. Polls every
        0.2 s (Flower's `send_and_receive` sleeps 3 s between polls)."""
        messages = list(messages)
        if not messages:
            return [], [], []
        ids = list(grid.push_messages(messages))
        sent = dict(zip(ids, messages, strict=True))
        waiting, replies = set(ids), []
        end = time.monotonic() + self.round_timeout
        while waiting:
            got = list(grid.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or time.monotonic() >= end:
                break
            time.sleep(0.2)
        failed = [sent[r.metadata.reply_to_message_id] for r in replies if r.has_error()]
        return replies, [sent[i] for i in ids if i in waiting], failed

    # -- 0) discovery ------------------------------------------------------------------------------
    def discover(self, grid: Grid) -> None:
        """Ask nodes not seen yet which partitions they host and which round their replica holds."""
        new = [n for n in grid.get_node_ids() if n not in self.nodes]
        if not new:
            return
        ask = [Message(RecordDict(), dst_node_id=n, message_type=QUERY) for n in new]
        for reply in self.exchange(grid, ask)[0]:  # a node that answers late is asked again
            if reply.has_error():
                continue
            info = reply.content["node"]
            node = reply.metadata.src_node_id
            n = int(info["num-clients"])
            if self.num_clients is not None and n != self.num_clients:
                raise RuntimeError(f"node {node} sees {n} clients, others {self.num_clients}: same recipe?")
            self.num_clients = n
            self.nodes[node] = (int(info["partition-id"]), int(info["num-partitions"]))
            self.synced[node] = int(info["replica-round"])

    def owner(self, client_id: int) -> int | None:
        """The node hosting `client_id` (the newest to claim it when a node was restarted)."""
        owner = None
        for node, (pid, count) in self.nodes.items():  # dicts keep discovery order
            if client_id % count == pid:
                owner = node
        return owner

    # -- 1) configure_train ------------------------------------------------------------------------
    def _sync_records(self, node: int, target: int) -> tuple[RecordDict, int]:
        """What `node` needs to reach round `target`, and the payload bytes of it."""
        have = min(self.synced.get(node, 0), target)
        missed = self.method.downlinks[have:target]
        union = int(np.count_nonzero(np.any(np.stack(missed), axis=0))) if missed else 0
        plan = plan_catchup(
            [int(np.count_nonzero(g)) for g in missed],
            union,
            self.num_params,
            self.replay_rate,
            self.bandwidth,
            self.merged_after,
        )
        # the target round's downlink always travels: it carries the round's Pro probabilities
        first = max(target if plan.kind == WEIGHTS else min(have + 1, target), 1)
        downlinks = [self.downlink_wire(r) for r in range(first, target + 1)]
        cfg = {"target": target, "first": first, "downlinks": downlinks, "sync": plan.kind}
        records = RecordDict({"sync": ConfigRecord(cfg)})
        payload = sum(len(d) for d in downlinks)
        if plan.kind == WEIGHTS:
            arrays = [p.detach().cpu().numpy().copy() for p in self.net.parameters()]
            records["weights"] = ArrayRecord(arrays)
            payload += 4 * self.num_params
        return records, payload

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.num_clients is None:
            raise RuntimeError("no node answered the discovery query: are SuperNodes connected?")
        clients = sample_clients(
            self.recipe.fed["seed"], server_round, self.num_clients, self.recipe.fed["fraction"]
        )
        self._round = {"clients": clients, "unhosted": [], "down_payload": [], "down_flower": []}
        messages = []
        for c in clients:
            node = self.owner(c)
            if node is None:
                self._round["unhosted"].append(c)
                continue
            content, payload = self._sync_records(node, server_round - 1)
            content["train"] = ConfigRecord({"round": server_round, "client": c})
            msg = Message(
                content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(server_round)
            )
            self._round["down_payload"].append(payload)
            self._round["down_flower"].append(flower_bytes(msg))
            messages.append(msg)
        return messages

    # -- 2) aggregate_train ------------------------------------------------------------------------
    def _screen(self, server_round: int, replies: Iterable[Message]) -> tuple[list[dict], Counter]:
        """The uplinks that pass the method's screening (`kit.federation.screening`: sender sampled this
        round, no replay, size, the decoder's checks, the message names its sender); reasons for the rest.

        The one place where uplinks are accepted or refused. Sample counts are the clients' own (the
        server holds no client data)."""
        refused: Counter = Counter()
        arrived: list[dict] = []
        for reply in replies:
            if reply.has_error():
                refused["client_error"] += 1
                continue
            up = dict(reply.content["uplink"])
            up["node"], up["flower-bytes"] = reply.metadata.src_node_id, flower_bytes(reply)
            arrived.append(up)
        samples = {int(u["client"]): int(u["num-examples"]) for u in arrived}
        sampled = {c: samples.get(c, 0) for c in self._round["clients"]}
        pairs = [(int(u["client"]), u["payload"]) for u in arrived]
        self._round["downlink"], screening = self.method.aggregate_train(server_round, pairs, sampled)
        refused.update(screening.counts())
        by_wire = {(int(u["client"]), bytes(u["payload"])): u for u in arrived}
        return [by_wire[(a.client, bytes(a.wire))] for a in screening.accepted], refused

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ups, refused = self._screen(server_round, replies)
        if not ups:
            raise RuntimeError(
                f"round {server_round}: no valid uplink within {self.round_timeout} s "
                f"(refused: {dict(refused)}); raise round-timeout or check the SuperNodes"
            )
        downlink = self._round["downlink"]
        self.method.apply_downlink(server_round, downlink)
        mismatched = sum(u["replica-digest"] != self._digest for u in ups) if self.check_replicas else 0
        self._round["answered"] = {u["node"] for u in ups}
        for u in ups:
            self.synced[u["node"]] = max(self.synced.get(u["node"], 0), int(u["replica-round"]))
        self.rounds_done = server_round
        self._digest = weights_digest(self.net)
        steps = sum(int(u["steps"]) for u in ups)
        up_payload = [len(u["payload"]) for u in ups]
        record = {
            "round": server_round,
            "clients": self._round["clients"],
            "trained": [int(u["client"]) for u in ups],
            "missing": sorted(set(self._round["clients"]) - {int(u["client"]) for u in ups}),
            "deadline_missed": self._round.get("deadline_missed", []),  # no reply by round-timeout
            "failed": self._round.get("failed", []),  # an error reply (e.g. the node is gone)
            "train_wait_s": self._round.get("train_wait_s"),
            "round_timeout_s": self.round_timeout,
            "nodes": [int(u["node"]) for u in ups],
            "refused": dict(refused),
            "train_loss": sum(float(u["loss-sum"]) for u in ups) / max(steps, 1),
            "syncs": [u["sync"] for u in ups],
            "replica_digest_mismatches": int(mismatched),
            "uplink_payload_bytes": up_payload,
            "uplink_flower_bytes": [int(u["flower-bytes"]) for u in ups],
            "downlink_payload_bytes": self._round["down_payload"],
            "downlink_flower_bytes": self._round["down_flower"],
            "downlink_bytes": len(downlink),
            "eval_loss": None,
        }
        self.history.append(record)
        metrics = {"train-loss": record["train_loss"], "uplinks": len(ups), "downlink-bytes": len(downlink)}
        return None, MetricRecord(metrics)

    # -- 3) evaluation -----------------------------------------------------------------------------
    def _eval_round(self, server_round: int) -> bool:
        every = int(self.recipe.fed["eval_every"])
        return server_round == self.recipe.rounds or bool(every and server_round % every == 0)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self._eval_round(server_round) or not self.nodes:
            return []
        # a node that answered this round (not one that missed the deadline), best one already synced
        answered = self._round.get("answered", set())
        node = min(
            self.nodes,
            key=lambda n: (n not in answered, self.synced.get(n, 0) < server_round - 1, self.nodes[n]),
        )
        content, _ = self._sync_records(node, server_round)
        return [
            Message(content, dst_node_id=node, message_type=MessageType.EVALUATE, group_id=str(server_round))
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        for reply in replies:
            if reply.has_error():
                continue
            res = reply.content["eval"]
            self.synced[reply.metadata.src_node_id] = int(res["replica-round"])
            self.history[-1]["eval_loss"] = float(res["eval-loss"])
            self.history[-1]["eval_replica_digest_ok"] = res["replica-digest"] == self._digest
            return MetricRecord({"eval-loss": float(res["eval-loss"])})
        return None

    def summary(self) -> None:
        print(f"[kit] FedKSeed on Flower: {self.recipe.method}, {self.recipe.rounds} rounds", flush=True)

    # -- 4) the rounds and the checkpoint ----------------------------------------------------------
    def run(self, grid: Grid, stop_after: int | None = None) -> dict:
        """Rounds rounds_done+1..rounds (or up to `stop_after`), then summary.json; returns it."""
        self.summary()
        last = self.recipe.rounds if stop_after is None else min(stop_after, self.recipe.rounds)
        for rnd in range(self.rounds_done + 1, last + 1):
            t0 = time.perf_counter()
            self.discover(grid)
            train = self.configure_train(rnd, ArrayRecord(), ConfigRecord(), grid)
            t1 = time.perf_counter()
            replies, late, failed = self.exchange(grid, train)
            self._round["deadline_missed"] = sorted(int(m.content["train"]["client"]) for m in late)
            self._round["failed"] = sorted(int(m.content["train"]["client"]) for m in failed)
            self._round["train_wait_s"] = time.perf_counter() - t1
            self.aggregate_train(rnd, replies)
            asks = list(self.configure_evaluate(rnd, ArrayRecord(), ConfigRecord(), grid))
            if asks:
                self.aggregate_evaluate(rnd, self.exchange(grid, asks)[0])
            self.history[-1]["time_s"] = time.perf_counter() - t0
            self.save_checkpoint()
            self.write_summary()  # progress: summary.json after every round, `finished` after the last
            print(f"[kit] round {rnd}: {json.dumps(self.history[-1])}", flush=True)
        return self.write_summary()

    def save_checkpoint(self) -> None:
        """The seed history and the per-round records, written atomically (temp + fsync + rename)."""
        self.ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "method": self.method.name,
            "rounds_done": self.rounds_done,
            "method_state": self.method.state_dict(),
            "history": json.dumps(self.history),
            "resumed_at": json.dumps(self.resumed_at),
        }
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(state, tmp)
        fsync_replace(tmp, self.ckpt)

    def _load_checkpoint(self) -> None:
        fix = f"restore it from a copy, or move {self.run_dir} away to start the federation afresh"
        state = load_verified(self.ckpt, "server checkpoint", fix)
        if state["method"] != self.method.name:
            raise ValueError(
                f"{self.ckpt} is of a {state['method']!r} run, this recipe is {self.method.name!r}"
            )
        self.method.load_state_dict(state["method_state"])
        self.method.restore_global()  # theta_g = theta_0 replayed through every round's G
        self.rounds_done = int(state["rounds_done"])
        self.history = json.loads(state["history"])
        self.resumed_at = [*json.loads(state.get("resumed_at", "[]")), self.rounds_done]

    def write_summary(self) -> dict:
        """summary.json: digest of the global weights, losses and the bytes on the wire per round."""
        h = self.history
        ups = [b for r in h for b in r["uplink_payload_bytes"]]
        downs = [b for r in h for b in r["downlink_payload_bytes"]]
        summary = {
            "method": self.method.name,
            "rounds": self.rounds_done,
            "finished": self.rounds_done == self.recipe.rounds,
            "global_weights_sha256": self._digest,
            "num_clients": self.num_clients,
            "nodes": {str(n): pid for n, (pid, _) in self.nodes.items()},  # node id -> partition, found
            "resumed_at": self.resumed_at,
            "train_loss_per_round": [r["train_loss"] for r in h],
            "eval_loss_per_round": [r["eval_loss"] for r in h],
            "uplink_payload_bytes_max": max(ups, default=0),
            "uplink_flower_bytes_max": max((b for r in h for b in r["uplink_flower_bytes"]), default=0),
            "downlink_payload_bytes_max": max(downs, default=0),
            "downlink_flower_bytes_max": max((b for r in h for b in r["downlink_flower_bytes"]), default=0),
            "paper_claim_bytes": 18 * 1024,
            "replica_digest_mismatches": sum(r["replica_digest_mismatches"] for r in h),
            "per_round": h,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, self.run_dir / "summary.json")
        return summary
