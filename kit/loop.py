"""The federated-loop Callback: one Trainer epoch is one round, the same round for every method.

The round itself is the round core's (`kit.rounds`, shared with Flower's strategy); this callback
is Lightning's glue. Per round (`server_round` counts from 1):
  1) configure_train: the round's plan (`ServerRun.plan`: sampling, faults, each client's steps from its local
     budget, `kit.federation.budget`: tau steps for ZO methods, whole passes for first-order ones),
     this process's share of it to the datamodule (idle steps keep processes in step);
  2) each client: restore the global parameters (`WeightSnapshot`), the method's client update steps
     the batches Lightning feeds, then its encoded uplink (`ClientTally`);
  3) every process gets every uplink's bytes; `ServerRun.close_round` screens and aggregates them
     into the downlink, applies it to the restored global parameters (saved after), records it;
  4) evaluation (`kit.evaluation`), loggers, summary.json.
Everything random is a pure function of (seed, round, client), so results do not depend on the
number of processes and a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from tqdm.auto import tqdm

from kit import evaluation
from kit.data.datamodule import IDLE_CLIENT as IDLE
from kit.divergence import DivergenceWatch, divergence_line
from kit.federation.bounds import robust_rule_warning
from kit.federation.budget import LocalBudget, client_steps, local_budget, process_plan
from kit.methods import Method, build_method
from kit.metrics_csv import RoundCSVLogger
from kit.ranges import check_fed_ranges
from kit.reporting import headline, log_rouge_tables
from kit.rounds import ClientTally
from kit.rounds.config import FLAG_DEFAULTS, FedConfig
from kit.rounds.privacy import attach_dp
from kit.rounds.run import ServerRun
from kit.rounds.state import check_method
from kit.snapshot import WeightSnapshot

log = logging.getLogger(__name__)


class FederatedLoop(pl.Callback):
    """Orchestrates federated rounds over the Trainer's epochs (`--trainer.max_epochs` = rounds).

    Args:
        num_seeds: K, the size of FedKSeed's candidate seed pool (paper 4096).
        fraction: m, the fraction of clients sampled each round (paper 0.05).
        local_steps: tau, local steps of each client per round (paper 200); the budget of the ZO methods,
            and of first-order methods when `local_epochs` is null.
        local_epochs: first-order methods (fedit, fedit-sgd, fedptuning, fedprompt, fedavg): passes over
            the client's data per round, ceil(examples / batch size) steps each (paper and FedHDS: 1);
            null: they take `local_steps` like the ZO methods. ZO methods always take `local_steps`.
        bias_loss_clip: FedKSeed-Pro clips history magnitudes to this before averaging (reference 1000).
        pro_temperature: FedKSeed-Pro's scale on the normalised scores inside the softmax (reference 1).
        equal_weights: aggregate clients with equal weights instead of by sample count.
        seed: federation seed: the seed pool, client sampling, per-step seed choices, client dropout.
        eval_every: eval loss every n rounds (0: only before training and after the last round).
        eval_batch_size: batch size of the eval-loss passes.
        rouge_every: zero-shot Rouge-L every n rounds (0: only after the last round, if `rouge_at_end`).
        rouge_at_end: zero-shot Rouge-L of the final global model (greedy, 128 new tokens).
        rouge_at_start: also of the base model before training, on the same examples (the headline's
            before / after).
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
        screen_bound: reject, as `out_of_bound`, uplinks no honest client can send: FedKSeed scalars
            beyond tau * C / (2 eps) (C = model.grad_clip, else loss_range), tensor payloads whose
            change exceeds tensor_norm_ratio x the global parameters' norm (`kit.federation.bounds`).
        loss_range: an upper bound of an honest client's training loss in nats (the C above).
        tensor_norm_ratio: the tensor payloads' bound, relative to the global parameters' norm.
        dp_mode: client-level differential privacy (docs/privacy.md): "off"; "central" (the server clips
            each update to dp_clip and noises the mean); "local" (each client clips and noises its own).
        dp_clip: C, the L2 bound of one client's update per round (FedKSeed: its K scalars).
        dp_noise_multiplier: sigma: noise std sigma * 2C per coordinate (0: clip only, epsilon infinite).
        dp_target_epsilon: instead of sigma: the smallest sigma reaching this epsilon after all rounds.
        dp_delta: the delta of the accountant's (epsilon, delta), reported per round as `dp/epsilon`.
        dp_seed: the noise's seed (null: the federation seed); keep it from whom the guarantee is against.
        divergence_factor: warn when the eval loss exceeds this times its best so far (null: off);
            a loss at the uniform predictor's ln(vocab) or non-finite is always reported (`kit.divergence`).
        stop_on_divergence: stop the run at a divergence, keeping the last good round's checkpoint.
    """

    def __init__(
        self,
        num_seeds: int = 4096,
        fraction: float = 0.05,
        local_steps: int = 200,
        local_epochs: int | None = None,
        bias_loss_clip: float = 1000.0,
        pro_temperature: float = 1.0,
        equal_weights: bool = False,
        seed: int = 42,
        eval_every: int = 1,
        eval_batch_size: int = 8,
        rouge_every: int = 0,
        rouge_at_end: bool = True,
        rouge_at_start: bool = False,
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
        screen_bound: bool = True,
        loss_range: float = 100.0,
        tensor_norm_ratio: float = 100.0,
        dp_mode: Literal["off", "central", "local"] = "off",
        dp_clip: float | None = None,
        dp_noise_multiplier: float | None = None,
        dp_target_epsilon: float | None = None,
        dp_delta: float = 1e-5,
        dp_seed: int | None = None,
        divergence_factor: float | None = 2.0,
        stop_on_divergence: bool = False,
    ) -> None:
        check_fed_ranges(locals())
        flags = {k: v for k, v in locals().items() if k in FLAG_DEFAULTS}
        self.config = config = FedConfig.from_flags(flags)  # checked, per concern (kit/rounds/config.py)
        self.settings, self.faults, self.eval = config.settings, config.faults, config.eval
        self.watch = DivergenceWatch(divergence_factor)
        self.stop_on_divergence = stop_on_divergence
        self.halted = False  # stopped at a divergence: the round's checkpoint is not written
        self.experiment: dict = {}  # the experiment-defining config, set by the CLI (kit.resume_guard)
        self.config_changes: list[dict] = []  # deliberate changes on resume (--resume_changes)
        self.k, self.fraction, self.local_steps, self.seed = num_seeds, fraction, local_steps, seed
        self.snapshot_where, self.progress = snapshot, progress
        self.local_epochs = config.local_epochs
        self.budget: LocalBudget | None = None  # set in setup, from the method
        self.run_dir: Path | None = None  # the Trainer's default_root_dir (the CLI's --run_dir)
        self.method: Method | None = None
        self.run: ServerRun | None = None  # the round core's run state (kit/rounds/run.py)
        self._recorded: dict | None = None  # a resumed checkpoint's state
        self._round: dict = {}

    # -- setup --------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        self.run_dir = Path(trainer.default_root_dir)
        trainer.datamodule.setup("fit")
        if self.method is None:
            self.method = build_method(pl_module.hparams.method, pl_module.hparams, self.settings)
            shape = trainer.datamodule.num_clients_effective, self.fraction, trainer.max_epochs
            attach_dp(self.method, self.config.privacy, self.seed, *shape)
        self.budget = local_budget(self.method.name, self.local_steps, self.local_epochs)

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        """The run state: θ₀, the method's model, on resume the checkpoint's global state (checked)."""
        t0 = time.perf_counter()
        model_id, recorded = pl_module.hparams.model, self._recorded
        fed = self.settings, self.faults, self.fraction
        self.run = ServerRun(self.method, pl_module.net, model_id, *fed, recorded)
        self.run.reporter.t0, pl_module.net = t0, self.run.net
        self.watch.vocab_size = getattr(getattr(self.run.net, "config", None), "vocab_size", None)
        per_round = max(1, int(trainer.datamodule.num_clients_effective * self.fraction))
        warning = robust_rule_warning(self.settings.aggregation, self.settings.trim_fraction, per_round)
        if warning and trainer.is_global_zero:
            log.warning(warning)
        where = self.snapshot_where
        if where == "auto":
            where = "disk" if pl_module.device.type == "cpu" else "memory"
        path = self.run_dir / f".global_weights.rank{trainer.global_rank}.bin"
        self._snapshot = WeightSnapshot(self.method.global_params(), where, path)
        reporter = self.run.reporter
        if recorded is not None and trainer.is_global_zero:  # metrics.csv: keep the checkpointed rounds
            for logger in trainer.loggers:
                if isinstance(logger, RoundCSVLogger):
                    logger.resume(self.run.rounds_done)
        elif recorded is None and reporter.eval_loss_before is None:
            reporter.eval_loss_before = evaluation.eval_loss(trainer, pl_module, self.eval.eval_batch_size)
            before = {"eval/loss": reporter.eval_loss_before}
            if self.eval.rouge_at_start:
                before.update(self._rouge(trainer, pl_module, 0))
            reporter.log(trainer, before, step=0)
            self.watch.reference = reporter.eval_loss_before
        self._snapshot.save()
        self._plan_round(trainer, self.run.rounds_done + 1)
        if trainer.is_global_zero and self.progress:
            bar = {"desc": "rounds", "position": 0, "dynamic_ncols": True}
            self._bar = tqdm(total=trainer.max_epochs, initial=self.run.rounds_done, **bar)

    # -- 1) configure_train ------------------------------------------------------------------
    def _plan_round(self, trainer: pl.Trainer, rnd: int) -> None:
        """Plan round `rnd` (`kit.rounds.plan_round`) and hand this process its share to the datamodule.

        Done before the round starts: Lightning fetches the first batch before `on_train_epoch_start`.
        """
        dm = trainer.datamodule
        sizes, batch = dm.client_sizes, dm.batch_size
        plan = self.run.plan(
            rnd, dm.num_clients_effective, lambda c: client_steps(sizes[c], batch, self.budget)
        )
        # Lightning syncs the processes at every step: pad this process to the busiest one's steps
        mine = process_plan(plan.steps, trainer.global_rank, trainer.world_size, IDLE)
        dm.set_round_plan(rnd, mine, whole_passes=self.budget.whole_passes)
        self._round = {"plan": plan, "mine": [c for c, _ in mine if c != IDLE], "rows": {}, "client": None}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._round["t0"] = time.perf_counter()
        if trainer.is_global_zero and self.progress:
            plan = self._round["plan"]
            total = sum(plan.steps_of(c) for c in self._round["mine"])
            bar = {"position": 1, "leave": False, "dynamic_ncols": True}
            self._steps_bar = tqdm(total=total, desc=f"round {plan.round} local steps", **bar)

    # -- 2) local training ---------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        client = int(batch["client_id"])
        if client == IDLE:
            return
        tally = self._round["client"]
        if tally is None or tally.client != client:
            self._snapshot.restore()  # every client starts from the round's global parameters
            rnd = self._round["plan"].round
            pl_module.client = self.method.client(rnd, client, pl_module.batch_loss, self._snapshot.saved)
            self._round["client"] = ClientTally(client)
        self._step_t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(batch["client_id"]) == IDLE:
            return
        self.run.reporter.step_times.append(time.perf_counter() - self._step_t0)
        step, tally = outputs["step"], self._round["client"]
        tally.add(step)
        if trainer.is_global_zero and self.progress:
            self._steps_bar.update(1)
            self._steps_bar.set_postfix(client=tally.client, loss=f"{step.loss:.3f}")
        if int(batch["local_step"]) == int(batch["num_steps"]) - 1:
            num_examples = trainer.datamodule.client_sizes[tally.client]
            self._round["rows"][tally.client] = tally.result(pl_module.client.finish(), num_examples)
            pl_module.client, self._round["client"] = None, None

    # -- 3) aggregate_train + 4) global update -------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        plan, run = self._round["plan"], self.run
        rnd = plan.round
        rows = _gather(trainer, self._round["rows"])
        results = [rows[c] for c in plan.training]  # arrival order
        sizes = trainer.datamodule.client_sizes
        samples = {c: sizes[c] for c in plan.clients}
        snap = self._snapshot
        metrics, outcome = run.close_round(plan, results, samples, snap.restore, snap.save)
        metrics["time/round_s"] = time.perf_counter() - self._round["t0"]
        ev = self.eval
        if ev.loss_due(rnd, trainer.max_epochs):
            metrics["eval/loss"] = evaluation.eval_loss(trainer, pl_module, ev.eval_batch_size)
        if ev.rouge_due(rnd, trainer.max_epochs):
            metrics.update(self._rouge(trainer, pl_module, rnd))
        run.finish_metrics(metrics, results, outcome)
        self._watch(trainer, rnd, metrics)
        run.reporter.log(trainer, metrics, step=rnd)
        if trainer.is_global_zero:
            if self.progress:
                self._steps_bar.close()
                self._bar.update(1)
                losses = {"train_loss": f"{metrics['train/loss']:.4f}"}
                self._bar.set_postfix(**losses, eval_loss=f"{run.reporter.last_eval_loss():.4f}")
            self.write_summary(trainer)
        self._plan_round(trainer, rnd + 1)

    def _rouge(self, trainer: pl.Trainer, pl_module, rnd: int) -> dict[str, float]:
        """Zero-shot Rouge-L of the global model after round `rnd` (0: the base model), recorded."""
        out_dir = self.run_dir / "eval" / f"round_{rnd}"
        ev = self.eval
        scores = evaluation.rouge(trainer, pl_module, ev.rouge_suites, ev.rouge_limit, out_dir, self.progress)
        if not scores:
            return {}
        log_rouge_tables(trainer, scores, out_dir)
        return self.run.reporter.record_rouge(rnd, scores)

    def _watch(self, trainer: pl.Trainer, rnd: int, metrics: dict) -> None:
        """Collapse detection on the round's losses: one warning line each; stop if asked."""
        train = self.run.reporter.history["train_loss"][-1]  # None: no client trained this round
        for kind, loss in (("train", train), ("eval", metrics.get("eval/loss"))):
            event = self.watch.observe(rnd, kind, loss)
            if event is None:
                continue
            if trainer.is_global_zero:
                log.warning(divergence_line(event, self.stop_on_divergence))
            if self.stop_on_divergence:
                self.halted = trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            if self.progress:
                self._bar.close()
            summary = self.write_summary(trainer, final=True)
            print(f"\n[kit] run directory: {self.run_dir}\n[kit] {json.dumps(headline(summary))}", flush=True)
        self._snapshot.cleanup()
        self.method.close()

    def write_summary(self, trainer: pl.Trainer, final: bool = False) -> dict:
        """summary.json of the run so far (with the final weights digest when `final`)."""
        dm = trainer.datamodule
        facts = self.run.facts(dm.num_clients_effective, dm.dropped, "lightning")
        facts["world_size"] = trainer.world_size
        facts["local_budget"] = self.budget.to_dict()
        facts["overlong_examples"] = dm.overlong_counts
        facts["divergence"] = self.watch.events
        facts["stopped_on_divergence"] = self.watch.events[-1]["round"] if self.halted else None
        facts["config_changes"] = self.config_changes
        return self.run.write_summary(self.run_dir / "summary.json", facts, final)

    # -- checkpoint: the run state (FedKSeed: the seed history, no weights) ---------------------
    def state_dict(self) -> dict:
        state = self.run.state_dict()
        state["divergence"] = self.watch.state_dict()
        state["experiment"], state["config_changes"] = self.experiment, self.config_changes
        return state

    def load_state_dict(self, state: dict) -> None:
        check_method(state, self.method, "the checkpoint")
        self.watch.load_state_dict(state.get("divergence", {}))
        self._recorded = state


def _gather(trainer: pl.Trainer, rows: dict) -> dict:
    """Every process's client results, merged: each process sees every uplink."""
    if trainer.world_size == 1:
        return rows
    gathered: list[dict | None] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, rows)
    return {cid: row for part in gathered for cid, row in part.items()}
