"""A node's side of the federation: its model replica on disk, catch-up sync, local training, eval.

A node hosts the clients `c` with `c % num_partitions == partition_id`. Its replica is the global
model at the last round it synced to, kept on disk (`replica-<round>.bin`, written atomically) so it
survives the ClientApp process (one per message) and a killed SuperNode. Each message first syncs
the replica to the round the server names: a weights download when the server sent weights, then
the downlinks the replica misses, replayed in order (`kit.federation.sync.replay`, bit-identical to
the server) or merged (`merged_replay`, when the server allowed it). Clients then train tau steps
from the synced replica, exactly as the Lightning loop trains them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from kit import evaluation
from kit.deploy.recipe import Recipe
from kit.federation.catchup import MERGED
from kit.federation.messages import decode_downlink
from kit.federation.sync import merged_replay, replay
from kit.methods import build_method
from kit.methods.fedkseed import FedKSeed
from kit.models import load_model
from kit.module import FedKSeedModule
from kit.reporting import weights_digest
from kit.snapshot import WeightSnapshot
from kit.zo.master import hp_master_dtype


@dataclass
class _Runtime:
    """What a process builds once per recipe: data, model (a scratch buffer), method, loss module."""

    dm: object
    module: FedKSeedModule
    method: FedKSeed
    params: list[torch.Tensor]


_RUNTIMES: dict[str, _Runtime] = {}  # one per recipe: a process may serve several messages


def recipe_key(recipe: Recipe) -> str:
    """A short digest of the resolved recipe: replicas of another recipe are never mixed up."""
    text = json.dumps([recipe.method, recipe.hp, recipe.data, recipe.fed], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _runtime(recipe: Recipe) -> _Runtime:
    key = recipe_key(recipe)
    if key not in _RUNTIMES:
        dm = recipe.datamodule()
        dm.setup("fit")
        module = FedKSeedModule(**recipe.hp)
        module.net = load_model(recipe.hp["model"], dtype=hp_master_dtype(recipe.hp), device="cpu")
        method = build_method(recipe.method, recipe.hp, recipe.settings)
        module.net = method.prepare(module.net)
        _RUNTIMES[key] = _Runtime(dm, module, method, method.global_params())
    return _RUNTIMES[key]


class NodeReplica:
    """The replica of one node (`state_dir`) for `recipe`."""

    def __init__(self, recipe: Recipe, state_dir: str | Path, partition_id: int, num_partitions: int):
        if not 0 <= partition_id < num_partitions:
            raise ValueError(
                f"node config partition-id={partition_id} must be in [0, num-partitions={num_partitions})"
            )
        self.recipe, self.partition_id, self.num_partitions = recipe, partition_id, num_partitions
        self.dir = Path(state_dir) / f"replica-{recipe_key(recipe)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rt = _runtime(recipe)

    # -- the replica on disk ---------------------------------------------------------------------
    def saved_round(self) -> int:
        """The round of the newest replica file (0: none yet, the replica is theta_0)."""
        rounds = [int(p.stem.split("-")[1]) for p in self.dir.glob("replica-*.bin")]
        return max(rounds, default=0)

    def _file(self, rnd: int) -> Path:
        return self.dir / f"replica-{rnd:06d}.bin"

    def load(self) -> int:
        """Put the replica into the model; returns its round."""
        rnd = self.saved_round()
        if rnd == 0:
            theta0 = load_model(self.recipe.hp["model"], dtype=hp_master_dtype(self.recipe.hp), device="cpu")
            with torch.no_grad():
                for p, q in zip(self.rt.params, theta0.parameters(), strict=True):
                    p.copy_(q)
        else:
            WeightSnapshot(self.rt.params, "disk", self._file(rnd)).restore()
        return rnd

    def save(self, rnd: int) -> None:
        """Write the model as the replica of round `rnd` (atomically), then drop older ones."""
        WeightSnapshot(self.rt.params, "disk", self._file(rnd)).save()
        for p in self.dir.glob("replica-*.bin"):
            if int(p.stem.split("-")[1]) < rnd:
                p.unlink()

    # -- sync ------------------------------------------------------------------------------------
    def sync(self, target: int, first: int, downlinks: list[bytes], kind: str, weights=None) -> dict:
        """Bring the replica to round `target` and save it; returns what was done.

        `downlinks` are the encoded downlinks of rounds first..target (the last one also carries
        Pro's probabilities); `weights` (float32 arrays in parameter order) are the global model of
        round `target` when the server chose a download.
        """
        m = self.rt.method
        at = self.load()
        done = "none"
        if weights is not None and at < target:
            with torch.no_grad():
                for p, w in zip(self.rt.params, weights, strict=True):
                    p.copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)).view(p.shape))
            at, done = target, "weights"
        rounds = list(range(first, first + len(downlinks)))
        if rounds and rounds[-1] != target:
            raise ValueError(f"downlinks end at round {rounds[-1]}, the server names round {target}")
        missing = [(r, w) for r, w in zip(rounds, downlinks, strict=True) if r > at]
        if missing and missing[0][0] != at + 1:
            raise ValueError(
                f"the replica is at round {at} and the server sent downlinks from round {missing[0][0]}: "
                f"it must resend from round {at + 1}"
            )
        if at > target:
            raise ValueError(f"the replica is at round {at}, ahead of the server's round {target}")
        decoded = [decode_downlink(w, m.pool.k, m.pool.fingerprint, expected_round=r) for r, w in missing]
        passes = 0
        if decoded:
            catch_up = merged_replay if kind == MERGED else replay
            args = () if kind == MERGED else (m.hp["weight_decay"],)
            passes = catch_up(m.perturber, m.pool, decoded, m.hp["lr"], *args)
            done = MERGED if kind == MERGED else "replay"
        if downlinks:  # the round's seed probabilities (Pro) come with the last downlink
            m.probs = decode_downlink(downlinks[-1], m.pool.k, m.pool.fingerprint, target).probabilities
        else:
            m.probs = m.server.probabilities()  # round 1: the initial (uniform) ones, as the server's
        if at != target or done != "none":
            self.save(target)
        return {"sync": done, "sync-passes": passes, "replica-round": target, "replica-digest": self.digest()}

    def digest(self) -> str:
        return weights_digest(self.rt.module.net)

    # -- work --------------------------------------------------------------------------------------
    def hosts(self, client_id: int) -> bool:
        return client_id % self.num_partitions == self.partition_id

    def num_clients(self) -> int:
        return self.rt.dm.num_clients_effective

    def train(self, server_round: int, client_id: int) -> dict:
        """tau local steps of `client_id` from the synced replica; returns its uplink and stats."""
        if not self.hosts(client_id) or not 0 <= client_id < self.num_clients():
            raise ValueError(
                f"client {client_id} is not hosted here (partition-id={self.partition_id}, "
                f"num-partitions={self.num_partitions}, {self.num_clients()} clients)"
            )
        rt, steps = self.rt, int(self.recipe.fed["local_steps"])
        rt.dm.set_round_plan(server_round, [(client_id, steps)])
        client = rt.method.client(server_round, client_id, rt.module.batch_loss, None)
        loss, trained, skipped = 0.0, 0, 0
        rt.module.net.train()  # as under the Trainer
        for batch in rt.dm.round_batches():
            out = client.step(batch, int(batch["local_step"]))
            if out.skipped:
                skipped += 1
            else:
                loss, trained = loss + out.loss, trained + 1
        rt.module.net.eval()
        return {
            "payload": client.finish(),
            "client": client_id,
            "num-examples": rt.dm.client_sizes[client_id],
            "loss-sum": loss,
            "steps": trained,
            "skipped": skipped,
        }

    def eval_loss(self) -> dict:
        """Mean per-example response loss on the held-out set (as `kit.evaluation.eval_loss`)."""
        shim = SimpleNamespace(datamodule=self.rt.dm, world_size=1, global_rank=0)
        batch_size = int(self.recipe.fed["eval_batch_size"])
        return {"eval-loss": evaluation.eval_loss(shim, self.rt.module, batch_size)}
