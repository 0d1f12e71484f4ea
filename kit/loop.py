"""The federated-loop Callback: one Trainer epoch is one round, the same round for every method.

Per round (`server_round` counts from 1):
  1) configure_train: sample the round's clients (seeded by round), decide which drop out or miss the
     deadline (`kit.federation.faults`), give this process its share of the others;
  2) each client: restore the global parameters, tau local steps of the method's client update,
     then its encoded uplink (`kit.methods`: K scalars for FedKSeed, tensors for the baselines);
  3) aggregate_train: every process gets every uplink's bytes, the method screens them (rejections
     counted, never aggregated) and aggregates the accepted ones in client-id order into the downlink;
  4) global update: restore the global parameters, apply the decoded downlink, save them; then
     evaluation (`kit.evaluation`) and reporting (`kit.reporting`).
Everything random is a pure function of (seed, round, client), so results do not depend on the
number of processes and a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from tqdm.auto import tqdm

from kit import evaluation
from kit.data.datamodule import IDLE_CLIENT as IDLE
from kit.federation.faults import FaultModel
from kit.federation.server import sample_clients
from kit.identity import check_rebuilt, check_theta0, theta0_identity, weights_digest
from kit.methods import FedSettings, Method, build_method
from kit.metrics_csv import RoundCSVLogger
from kit.reporting import RunReporter, headline, log_rouge_tables
from kit.snapshot import WeightSnapshot
from kit.zo.definition import ZDefinition, check_same
from kit.zo.master import check_recorded, master_dtype_of


class FederatedLoop(pl.Callback):
    """Orchestrates federated rounds over the Trainer's epochs (`--trainer.max_epochs` = rounds).

    Args:
        num_seeds: K, the size of FedKSeed's candidate seed pool (paper 4096).
        fraction: m, the fraction of clients sampled each round (paper 0.05).
        local_steps: tau, local steps of each client per round (paper 200).
        bias_loss_clip: FedKSeed-Pro clips history magnitudes to this before averaging (reference 1000).
        pro_temperature: FedKSeed-Pro's scale on the normalised scores inside the softmax (reference 1).
        equal_weights: aggregate clients with equal weights instead of by sample count.
        seed: federation seed: the seed pool, client sampling, per-step seed choices, client dropout.
        eval_every: eval loss every n rounds (0: only before training and after the last round).
        eval_batch_size: batch size of the eval-loss passes.
        rouge_every: zero-shot Rouge-L every n rounds (0: only after the last round, if `rouge_at_end`).
        rouge_at_end: zero-shot Rouge-L of the final global model (greedy, 128 new tokens).
        rouge_suites: suites for Rouge-L, "ni" and/or "dolly" (default: the run's own dataset).
        rouge_limit: at most this many examples per suite (default: the whole held-out set of the
            run's data config: NI samples max(20, 2%) per test task, Dolly `--data.eval_size` of the
            held-out category, all of it when null).
        snapshot: where the global parameters wait while clients train: "memory", "disk" or "auto"
            (disk on CPU, host memory on accelerators).
        progress: show progress bars on rounds and local steps.
        dropout: probability that a sampled client drops out of a round (seeded by seed, round, client).
        straggler_prob: probability that a sampled client straggles (seeded likewise).
        straggler_delay_s: mean simulated delay of a straggler in seconds (exponential; never slept).
        deadline_s: per-round deadline in simulated seconds: later clients are missing (null: none).
        aggregation: server rule: "mean" (weighted by sample count), or per coordinate over clients
            "median" or "trimmed_mean" (robust to a few bad clients; costs a sort over clients).
        trim_fraction: trimmed mean: fraction of clients dropped at each end, in [0, 0.5).
        scalar_bound: FedKSeed(-Pro): clip each client's scalars to [-b, b] before aggregating (null: off).
    """

    def __init__(
        self,
        num_seeds: int = 4096,
        fraction: float = 0.05,
        local_steps: int = 200,
        bias_loss_clip: float = 1000.0,
        pro_temperature: float = 1.0,
        equal_weights: bool = False,
        seed: int = 42,
        eval_every: int = 1,
        eval_batch_size: int = 8,
        rouge_every: int = 0,
        rouge_at_end: bool = True,
        rouge_suites: list[str] | None = None,
        rouge_limit: int | None = None,
        snapshot: Literal["auto", "memory", "disk"] = "auto",
        progress: bool = True,
        dropout: float = 0.0,
        straggler_prob: float = 0.0,
        straggler_delay_s: float = 0.0,
        deadline_s: float | None = None,
        aggregation: Literal["mean", "median", "trimmed_mean"] = "mean",
        trim_fraction: float = 0.1,
        scalar_bound: float | None = None,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"--fed.fraction must be in (0, 1], got {fraction}")
        if local_steps < 1 or num_seeds < 1:
            raise ValueError("--fed.local_steps and --fed.num_seeds must be >= 1")
        if eval_every < 0 or rouge_every < 0:
            raise ValueError("--fed.eval_every and --fed.rouge_every must be >= 0")
        if rouge_suites is not None and not set(rouge_suites) <= {"ni", "dolly"}:
            raise ValueError(f"--fed.rouge_suites must name 'ni' and/or 'dolly', got {rouge_suites}")
        self.settings = FedSettings(
            seed,
            local_steps,
            num_seeds,
            bias_loss_clip,
            pro_temperature,
            equal_weights,
            aggregation,
            trim_fraction,
            scalar_bound,
        )
        self.faults = FaultModel(dropout, straggler_prob, straggler_delay_s, deadline_s)
        self.k, self.fraction, self.local_steps, self.seed = num_seeds, fraction, local_steps, seed
        self.eval_every, self.eval_batch_size, self.snapshot_where = eval_every, eval_batch_size, snapshot
        self.rouge_every, self.rouge_at_end = rouge_every, rouge_at_end
        self.rouge_suites, self.rouge_limit = rouge_suites, rouge_limit
        self.progress = progress
        self.run_dir: Path | None = None  # the Trainer's default_root_dir (the CLI's --run_dir)
        self.method: Method | None = None
        self.reporter = RunReporter()
        self.rounds_done = 0
        self.theta0: dict | None = None  # {"model", "sha256"} of the weights training started from
        self.master_dtype = "float32"  # the trained weights' dtype (--model.master_dtype)
        self.round_digests: list[str] = []  # sha256 of the global weights after each round
        self._recorded: dict = {}  # a resumed checkpoint's theta0 and z
        self._loaded: dict | None = None
        self._prepared = False
        self._round: dict = {}

    # -- setup --------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        self.run_dir = Path(trainer.default_root_dir)
        trainer.datamodule.setup("fit")
        if self.method is None:
            self.method = build_method(pl_module.hparams.method, pl_module.hparams, self.settings)

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.reporter.t0 = time.perf_counter()
        if not self._prepared:
            self._prepare(pl_module)
        where = self.snapshot_where
        if where == "auto":
            where = "disk" if pl_module.device.type == "cpu" else "memory"
        path = self.run_dir / f".global_weights.rank{trainer.global_rank}.bin"
        self._snapshot = WeightSnapshot(self.method.global_params(), where, path)
        if self._loaded is not None:  # resumed: the global model from the checkpoint's global state
            self.method.load_state_dict(self._loaded)
            self.method.restore_global()
            self._loaded = None
            if trainer.is_global_zero:  # metrics.csv: keep the checkpointed rounds' rows, drop later ones
                for logger in trainer.loggers:
                    if isinstance(logger, RoundCSVLogger):
                        logger.resume(self.rounds_done)
            if len(self.round_digests) == self.rounds_done > 0:
                check_rebuilt(self.round_digests[-1], pl_module.net, "the checkpoint")
        elif self.reporter.eval_loss_before is None:
            self.reporter.eval_loss_before = evaluation.eval_loss(trainer, pl_module, self.eval_batch_size)
            self.reporter.log(trainer, {"eval/loss": self.reporter.eval_loss_before}, step=0)
        self._snapshot.save()
        self._plan_round(trainer, self.rounds_done + 1)
        if trainer.is_global_zero and self.progress:
            self._bar = tqdm(
                total=trainer.max_epochs,
                initial=self.rounds_done,
                desc="rounds",
                position=0,
                dynamic_ncols=True,
            )

    def _prepare(self, pl_module) -> None:
        """theta_0's identity, then the method's model; on resume both checked against the checkpoint
        (same theta_0, and z drawn as recorded whatever this device's default backend)."""
        self.master_dtype = master_dtype_of(pl_module.net)
        if self._recorded:  # absent in older checkpoints: float32
            check_recorded(self._recorded.get("master_dtype"), self.master_dtype, "the checkpoint")
        self.theta0 = theta0_identity(pl_module.hparams.model, pl_module.net)
        if self._recorded.get("theta0"):
            check_theta0(self._recorded["theta0"], self.theta0, "the checkpoint")
        if self._recorded.get("z"):
            self.method.z_record = ZDefinition.from_dict(self._recorded["z"])
        pl_module.net = self.method.prepare(pl_module.net)
        if self.method.z_record is not None:
            check_same(self.method.z_record, self.method.z_definition(), "the checkpoint")
        self._prepared = True

    def _z(self) -> dict | None:
        zdef = self.method.z_definition()
        return zdef.to_dict() if zdef is not None else None

    # -- 1) configure_train ------------------------------------------------------------------
    def _plan_round(self, trainer: pl.Trainer, rnd: int) -> None:
        """Sample round `rnd`'s clients and hand this process its share to the datamodule.

        Done before the round starts: Lightning fetches the first batch before `on_train_epoch_start`.
        """
        dm = trainer.datamodule
        clients = sample_clients(self.seed, rnd, dm.num_clients_effective, self.fraction)
        faults = self.faults.round(self.seed, rnd, clients)
        # clients that drop out or miss the deadline do not train: their uplink would be discarded
        mine = faults.arrived[trainer.global_rank :: trainer.world_size]
        # Lightning syncs the processes at every step, so all of them must run as many steps
        padding = -(-len(faults.arrived) // trainer.world_size) - len(mine)
        plan = [(c, self.local_steps) for c in mine] + [(IDLE, self.local_steps)] * padding
        dm.set_round_plan(rnd, plan or [(IDLE, 1)])  # an epoch needs a step, even with every client missing
        self._round = {
            "round": rnd,
            "clients": clients,
            "faults": faults,
            "mine": mine,
            "rows": {},
            "client": None,
        }

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._round["t0"] = time.perf_counter()
        if trainer.is_global_zero and self.progress:
            total = len(self._round["mine"]) * self.local_steps
            self._steps_bar = tqdm(
                total=total,
                desc=f"round {self._round['round']} local steps",
                position=1,
                leave=False,
                dynamic_ncols=True,
            )

    # -- 2) local training ---------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        client = int(batch["client_id"])
        if client == IDLE:
            return
        c = self._round["client"]
        if c is None or c["id"] != client:
            self._snapshot.restore()  # every client starts from the round's global parameters
            pl_module.client = self.method.client(
                self._round["round"], client, pl_module.batch_loss, self._snapshot.saved
            )
            self._round["client"] = {"id": client, "loss": 0.0, "steps": 0, "skipped": 0}
        self._step_t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(batch["client_id"]) == IDLE:
            return
        self.reporter.step_times.append(time.perf_counter() - self._step_t0)
        step, c = outputs["step"], self._round["client"]
        if step.skipped:
            c["skipped"] += 1
        else:
            c["loss"] += step.loss
            c["steps"] += 1
        if trainer.is_global_zero and self.progress:
            self._steps_bar.update(1)
            self._steps_bar.set_postfix(client=c["id"], loss=f"{step.loss:.3f}")
        if int(batch["local_step"]) == int(batch["num_steps"]) - 1:
            wire = pl_module.client.finish()
            self._round["rows"][c["id"]] = (wire, c["loss"], c["steps"], c["skipped"])
            pl_module.client, self._round["client"] = None, None

    # -- 3) aggregate_train + 4) global update -------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        rnd, clients, faults = self._round["round"], self._round["clients"], self._round["faults"]
        rows = _gather(trainer, self._round["rows"])
        sizes = trainer.datamodule.client_sizes
        downlink, screening = self.method.aggregate_train(
            rnd, [(cid, rows[cid][0]) for cid in faults.arrived], {c: sizes[c] for c in clients}
        )
        self._snapshot.restore()
        method_metrics = self.method.apply_downlink(rnd, downlink)
        self._snapshot.save()
        self.rounds_done = rnd
        self.round_digests.append(weights_digest(pl_module.net))
        stats = np.array(
            [rows[cid][1:] + (len(rows[cid][0]),) for cid in faults.arrived], dtype=np.float64
        ).reshape(-1, 4)
        sent = bool(len(stats))  # False: every sampled client was missing
        metrics = {
            "train/loss": float(stats[:, 0].sum() / max(stats[:, 1].sum(), 1)) if sent else float("nan"),
            "fed/uplink_bytes_mean": float(stats[:, 3].mean()) if sent else 0.0,
            "fed/uplink_bytes_max": float(stats[:, 3].max()) if sent else 0.0,
            "fed/downlink_bytes": float(len(downlink)),
            **method_metrics,
            "zo/skipped_steps": float(stats[:, 2].sum()),
            "time/round_s": time.perf_counter() - self._round["t0"],
            **self.reporter.record_faults(rnd, faults, screening),
        }
        last = rnd == trainer.max_epochs
        if last or (self.eval_every and rnd % self.eval_every == 0):
            metrics["eval/loss"] = evaluation.eval_loss(trainer, pl_module, self.eval_batch_size)
        if (last and self.rouge_at_end) or (self.rouge_every and rnd % self.rouge_every == 0):
            out_dir = self.run_dir / "eval" / f"round_{rnd}"
            results = evaluation.rouge(
                trainer, pl_module, self.rouge_suites, self.rouge_limit, out_dir, self.progress
            )
            if results:
                metrics.update(self.reporter.record_rouge(rnd, results))
                log_rouge_tables(trainer, results, out_dir)
        self.reporter.record_round(
            metrics, [int(b) for b in stats[:, 3]], len(downlink), int(stats[:, 2].sum())
        )
        self.reporter.log(trainer, metrics, step=rnd)
        if trainer.is_global_zero:
            if self.progress:
                self._steps_bar.close()
                self._bar.update(1)
                self._bar.set_postfix(
                    train_loss=f"{metrics['train/loss']:.4f}",
                    eval_loss=f"{self.reporter.last_eval_loss():.4f}",
                )
            self.write_summary(trainer, pl_module)
        self._plan_round(trainer, rnd + 1)

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            if self.progress:
                self._bar.close()
            summary = self.write_summary(trainer, pl_module, final=True)
            print(f"\n[kit] run directory: {self.run_dir}\n[kit] {json.dumps(headline(summary))}", flush=True)
        self._snapshot.cleanup()
        self.method.close()

    def write_summary(self, trainer: pl.Trainer, pl_module, final: bool = False) -> dict:
        """summary.json of the run so far (with the final weights digest when `final`)."""
        dm = trainer.datamodule
        facts = {
            "method": self.method.name,
            "rounds": self.rounds_done,
            "clients_per_round": max(1, int(dm.num_clients_effective * self.fraction)),
            "num_clients": dm.num_clients_effective,
            "local_steps": self.local_steps,
            "seed": self.seed,
            **self.method.summary(),
            "dropped_examples": dm.dropped,
            "faults": {
                **asdict(self.faults),
                "aggregation": self.settings.aggregation,
                "trim_fraction": self.settings.trim_fraction,
                "scalar_bound": self.settings.scalar_bound,
            },
            "world_size": trainer.world_size,
            "theta0": self.theta0,
            "z": self._z(),
            "master_dtype": self.master_dtype,
        }
        return self.reporter.write_summary(
            self.run_dir / "summary.json", facts, pl_module.net if final else None
        )

    # -- checkpoint: the method's global state (FedKSeed: the seed history, no weights) ---------
    def state_dict(self) -> dict:
        return {
            "method": self.method.name,
            "rounds_done": self.rounds_done,
            "method_state": self.method.state_dict(),
            "theta0": self.theta0,
            "z": self._z(),
            "master_dtype": self.master_dtype,
            "round_digests": list(self.round_digests),
            **self.reporter.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method.name:
            raise ValueError(
                f"the checkpoint is of a {state.get('method')!r} run, this run is {self.method.name!r}: "
                "resume with the same --method"
            )
        self.rounds_done = int(state["rounds_done"])
        self._recorded = {
            "theta0": state.get("theta0"),
            "z": state.get("z"),
            "master_dtype": state.get("master_dtype"),
        }
        self.round_digests = list(state.get("round_digests", []))
        self.reporter.load_state_dict(state)
        self._loaded = state["method_state"]


def _gather(trainer: pl.Trainer, rows: dict) -> dict:
    """Every process's client rows (uplink bytes and stats), merged: each process sees every uplink."""
    if trainer.world_size == 1:
        return rows
    gathered: list[dict | None] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, rows)
    return {cid: row for part in gathered for cid, row in part.items()}
