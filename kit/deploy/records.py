"""Flower's own records of a run: the per-round record of nodes, syncs and message bytes, the runtime
fields of `summary.json`, `config.yaml` and the server's checkpoint file. The round's numbers and the
common summary are the round core's (kit/rounds); these are what only a real network has."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
import yaml

from kit.atomic import fsync_replace
from kit.deploy.messages import TrainReply
from kit.deploy.recipe import Recipe
from kit.rounds import RoundOutcome, RoundPlan


def round_record(
    plan: RoundPlan, ups: list[tuple[int, int, TrainReply]], outcome: RoundOutcome, errors: int, extra: dict
) -> dict:
    """Round `plan.round` on the wire: who trained, who was missing and why, nodes, syncs, bytes.

    `ups`: (node, Flower message bytes, reply) per uplink that arrived, in client order; `extra`:
    the strategy's own (deadline_missed, failed, train_wait_s, round_timeout_s,
    replica_digest_mismatches, downlinks)."""
    accepted = [a.client for a in outcome.screening.accepted]
    return {
        "round": plan.round,
        "clients": list(plan.clients),
        "trained": accepted,
        "missing": sorted(set(plan.clients) - set(accepted)),
        "deadline_missed": extra.get("deadline_missed", []),  # no reply by round-timeout
        "failed": extra.get("failed", []),  # an error reply (e.g. the node is gone)
        "train_wait_s": extra.get("train_wait_s"),
        "round_timeout_s": extra["round_timeout_s"],
        "uplink_clients": [u.client for *_, u in ups],  # the order of the per-uplink lists below
        "nodes": [int(node) for node, *_ in ups],
        "refused": dict(Counter({"client_error": errors, **outcome.screening.counts()})),
        "syncs": [u.sync.kind for *_, u in ups],
        "replica_digest_mismatches": int(extra["replica_digest_mismatches"]),
        "uplink_payload_bytes": [len(u.payload) for *_, u in ups],
        "uplink_flower_bytes": [size for _, size, _ in ups],
        "downlink_payload_bytes": extra["down_payload"],
        "downlink_flower_bytes": extra["down_flower"],
    }


def runtime_fields(history: list[dict], parts: dict[int, tuple[int, int]], resumed_at: list[int]) -> dict:
    """Flower's fields of `summary.json`, beside the schema every runtime shares."""

    def most(key: str) -> int:
        return max((b for r in history for b in r[key]), default=0)

    return {
        "nodes": {str(n): pid for n, (pid, _) in parts.items()},  # node id -> partition, as found
        "resumed_at": resumed_at,
        "uplink_payload_bytes_max": most("uplink_payload_bytes"),
        "uplink_flower_bytes_max": most("uplink_flower_bytes"),
        "downlink_payload_bytes_max": most("downlink_payload_bytes"),
        "downlink_flower_bytes_max": most("downlink_flower_bytes"),
        "paper_claim_bytes": 18 * 1024,
        "replica_digest_mismatches": sum(r["replica_digest_mismatches"] for r in history),
        "per_round": history,
    }


def write_config(run_dir: Path, recipe: Recipe) -> None:
    """config.yaml: the resolved recipe in `fedkseed fit`'s layout (rebuild, export, notebooks read it)."""
    r = recipe
    config = {
        "method": r.method,
        "model": r.hp,
        "data": r.data,
        "fed": r.fed,
        "trainer": {"max_epochs": r.rounds},
    }
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    fsync_replace(tmp, run_dir / "config.yaml")


def save_state(path: Path, state: dict) -> None:
    """`torch.save` written atomically (temp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    fsync_replace(tmp, path)
