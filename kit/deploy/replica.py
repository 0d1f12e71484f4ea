"""A node's side of the federation: its model replica on disk, catch-up sync, local training, eval.

A node hosts the clients `c` with `c % num_partitions == partition_id`. Its replica is the global
model at the last round it synced to, kept on disk (`replica-<round>.bin`, written atomically) so it
survives the ClientApp process (one per message) and a killed SuperNode. Each message first syncs
the replica to the round the server names: the global state when the server sent it (every
tensor-payload method; FedKSeed when cheaper), then the method's own catch-up over the downlinks the
replica misses (`Method.catch_up`: FedKSeed replays them, bit-identical to the server, or merged
when the server allowed it). Clients then train tau steps from the synced replica, exactly as the
Lightning loop trains them.
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
from kit.deploy.messages import SyncReport, SyncRequest, TrainRequest
from kit.deploy.recipe import Recipe
from kit.federation.budget import client_steps, local_budget
from kit.federation.catchup import MERGED
from kit.methods import Method, build_method
from kit.models import load_model
from kit.module import FedKSeedModule
from kit.reporting import weights_digest
from kit.rounds import ClientResult, train_client
from kit.rounds.privacy import attach_dp
from kit.snapshot import WeightSnapshot
from kit.zo.master import hp_master_dtype


@dataclass
class _Runtime:
    """What a process builds once per recipe: data, model (a scratch buffer), method, loss module."""

    dm: object
    module: FedKSeedModule
    method: Method
    params: list[torch.Tensor]


_RUNTIMES: dict[str, _Runtime] = {}  # one per recipe: a process may serve several messages


def recipe_key(recipe: Recipe) -> str:
    """A short digest of the resolved recipe: replicas of another recipe are never mixed up."""
    text = json.dumps([recipe.method, recipe.hp, recipe.data, recipe.fed], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _initial_global(recipe: Recipe) -> list[torch.Tensor]:
    """The global parameters before round 1: the method's prepared model from θ₀ (e.g. seeded adapters)."""
    method = build_method(recipe.method, recipe.hp, recipe.settings)
    try:
        method.prepare(load_model(recipe.hp["model"], dtype=hp_master_dtype(recipe.hp), device="cpu"))
        return [p.detach() for p in method.global_params()]
    finally:
        method.close()


def _runtime(recipe: Recipe) -> _Runtime:
    key = recipe_key(recipe)
    if key not in _RUNTIMES:
        dm = recipe.datamodule()
        dm.setup("fit")
        module = FedKSeedModule(**recipe.hp)
        module.net = load_model(recipe.hp["model"], dtype=hp_master_dtype(recipe.hp), device="cpu")
        method = build_method(recipe.method, recipe.hp, recipe.settings)
        fed = recipe.config
        shape = dm.num_clients_effective, fed.fraction, recipe.rounds
        attach_dp(method, fed.privacy, fed.settings.seed, *shape)
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
            with torch.no_grad():
                for p, q in zip(self.rt.params, _initial_global(self.recipe), strict=True):
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
    def sync(self, request: SyncRequest, weights=None) -> SyncReport:
        """Bring the replica to round `request.target` and save it; returns what was done.

        `request.downlinks` are the encoded downlinks of rounds first..target (methods that replay;
        the last one also carries the next round's client-side state); `weights` (float32 arrays in
        `global_params()` order) are the global state of round `target` when the server sent it.
        """
        target, first, downlinks, kind = request.target, request.first, request.downlinks, request.kind
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
        if at > target:
            raise ValueError(f"the replica is at round {at}, ahead of the server's round {target}")
        missing = [r for r in rounds if r > at]
        if at < target and (not missing or missing[0] != at + 1):
            sent = f"downlinks from round {missing[0]}" if missing else "no downlink and no global state"
            raise ValueError(
                f"the replica is at round {at} and the server sent {sent}: it must resend from round {at + 1}"
            )
        passes = self.rt.method.catch_up(at, list(zip(rounds, downlinks, strict=True)), kind == MERGED)
        if missing:
            done = MERGED if kind == MERGED else "replay"
        if at != target or done != "none" or not self._file(target).is_file():
            self.save(target)  # (round 0 too: a client's start values are read back from the file)
        return SyncReport(done, passes, target, self.digest())

    def digest(self) -> str:
        return weights_digest(self.rt.module.net)

    # -- work --------------------------------------------------------------------------------------
    def hosts(self, client_id: int) -> bool:
        return client_id % self.num_partitions == self.partition_id

    def num_clients(self) -> int:
        return self.rt.dm.num_clients_effective

    def train(self, request: TrainRequest) -> ClientResult:
        """`request.steps` local steps of its client from the synced replica: its uplink and counters."""
        server_round, client_id = request.round, request.client
        if not self.hosts(client_id) or not 0 <= client_id < self.num_clients():
            raise ValueError(
                f"client {client_id} is not hosted here (partition-id={self.partition_id}, "
                f"num-partitions={self.num_partitions}, {self.num_clients()} clients)"
            )
        rt, recipe = self.rt, self.recipe
        budget = local_budget(recipe.method, recipe.settings.local_steps, recipe.config.local_epochs)
        # a pass's length is the client's own: the server, which holds no client data, plans tau steps
        steps = client_steps(rt.dm.client_sizes[client_id], rt.dm.batch_size, budget)
        rt.dm.set_round_plan(server_round, [(client_id, steps)], whole_passes=budget.whole_passes)
        saved = WeightSnapshot(rt.params, "disk", self._file(self.saved_round())).saved
        rt.module.net.train()  # as under the Trainer
        try:
            return train_client(
                rt.method, server_round, client_id, rt.dm.round_batches(), rt.module.batch_loss, saved,
                rt.dm.client_sizes[client_id],
            )  # fmt: skip
        finally:
            rt.module.net.eval()

    def eval_loss(self) -> float:
        """Mean per-example response loss on the held-out set (as `kit.evaluation.eval_loss`)."""
        shim = SimpleNamespace(datamodule=self.rt.dm, world_size=1, global_rank=0)
        return evaluation.eval_loss(shim, self.rt.module, self.recipe.config.eval.eval_batch_size)
