"""The federated-loop Callback: one Trainer epoch is one FedKSeed round.

Per round (`server_round` counts from 1):
  1) configure_train: sample the round's clients (seeded by round), give this process its share;
  2) each client: restore the global weights, tau ZO steps with seeds drawn from the pool
     (uniform, or by FedKSeed-Pro probabilities), encode its uplink (K scalars, dense or sparse);
  3) aggregate_train: all processes exchange the decoded uplinks exactly, the server aggregates,
     the downlink is encoded/decoded like a client would receive it;
  4) global update theta_g -= lr * sum_j G_j z_j from the snapshot, eval loss every n rounds, log.
Everything random is a pure function of (seed, round, client), so results do not depend on the
number of processes and a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from tqdm.auto import tqdm

from kit.data.datamodule import IDLE_CLIENT as IDLE
from kit.federation.messages import (
    Uplink,
    decode_downlink,
    decode_uplink,
    encode_downlink,
    encode_uplink,
)
from kit.federation.seeds import SeedPool
from kit.federation.server import Server, sample_clients, sample_seed_indices
from kit.federation.sync import apply_scalars
from kit.snapshot import WeightSnapshot

STATS = 4  # per-client columns after the K scalars: loss sum, steps, skipped steps, uplink bytes


class FederatedLoop(pl.Callback):
    """Orchestrates FedKSeed rounds over the Trainer's epochs (`--trainer.max_epochs` = rounds).

    Args:
        num_seeds: K, the size of the candidate seed pool (paper 4096).
        fraction: m, the fraction of clients sampled each round (paper 0.05).
        local_steps: tau, ZO steps of each client per round (paper 200).
        pro: FedKSeed-Pro: sample seeds by their estimated importance instead of uniformly.
        bias_loss_clip: Pro clips history magnitudes to this before averaging (reference 1000).
        pro_temperature: Pro's scale on the normalised scores inside the softmax (reference 1).
        equal_weights: aggregate clients with equal weights instead of by sample count.
        seed: federation seed: the seed pool, client sampling and per-step seed choices.
        eval_every: eval loss every n rounds (0: only before training and after the last round).
        eval_batch_size: batch size of the eval-loss passes.
        rouge_every: zero-shot Rouge-L every n rounds (0: only after the last round, if `rouge_at_end`).
        rouge_at_end: zero-shot Rouge-L of the final global model (greedy, 128 new tokens).
        rouge_suites: suites for Rouge-L, "ni" and/or "dolly" (default: the run's own dataset).
        rouge_limit: at most this many examples per suite (default: the whole suite; NI samples
            max(20, 2%) per test task, Dolly a seeded 200 of the held-out category).
        snapshot: where the global weights wait while clients train: "memory", "disk" or "auto"
            (disk on CPU, host memory on accelerators).
        progress: show progress bars on rounds and local steps.
    """

    def __init__(
        self,
        num_seeds: int = 4096,
        fraction: float = 0.05,
        local_steps: int = 200,
        pro: bool = False,
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
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"--fed.fraction must be in (0, 1], got {fraction}")
        if local_steps < 1 or num_seeds < 1:
            raise ValueError("--fed.local_steps and --fed.num_seeds must be >= 1")
        if eval_every < 0 or rouge_every < 0:
            raise ValueError("--fed.eval_every and --fed.rouge_every must be >= 0")
        if rouge_suites is not None and not set(rouge_suites) <= {"ni", "dolly"}:
            raise ValueError(f"--fed.rouge_suites must name 'ni' and/or 'dolly', got {rouge_suites}")
        self.rouge_every, self.rouge_at_end = rouge_every, rouge_at_end
        self.rouge_suites, self.rouge_limit = rouge_suites, rouge_limit
        self.rouge: dict[str, float] = {}
        self.k, self.fraction, self.local_steps, self.seed = num_seeds, fraction, local_steps, seed
        self.eval_every, self.eval_batch_size, self.snapshot_where = eval_every, eval_batch_size, snapshot
        self.run_dir: Path | None = None  # the Trainer's default_root_dir (the CLI's --run_dir)
        self.progress = progress
        self.pool = SeedPool(num_seeds, seed)
        self.server = Server(self.pool, pro, bias_loss_clip, pro_temperature, equal_weights)
        self.downlinks: list[np.ndarray] = []  # G of every round: the whole global state with theta_0
        self.history: dict[str, list] = {
            "train_loss": [],
            "eval_loss": [],
            "uplink_bytes": [],
            "downlink_bytes": [],
            "skipped_steps": [],
            "probabilities": [],
        }
        self.eval_loss_before: float | None = None
        self._probs: np.ndarray | None = None
        self._client: dict | None = None
        self._round: dict = {}
        self._step_times: list[float] = []
        self._t0 = 0.0

    # -- setup --------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        self.run_dir = Path(trainer.default_root_dir)
        trainer.datamodule.setup("fit")

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        params = list(pl_module.net.parameters())
        where = self.snapshot_where
        if where == "auto":
            where = "disk" if pl_module.device.type == "cpu" else "memory"
        path = self.run_dir / f".global_weights.rank{trainer.global_rank}.bin"
        self._snapshot = WeightSnapshot(params, where, path)
        if self.downlinks:  # resumed: rebuild theta_g = theta_0 replayed through every downlink
            for g in self.downlinks:
                apply_scalars(
                    pl_module.perturber, self.pool, g, pl_module.hparams.lr, pl_module.hparams.weight_decay
                )
        elif self.eval_loss_before is None:
            self.eval_loss_before = self._eval_loss(trainer, pl_module)
            self._log(trainer, {"eval/loss": self.eval_loss_before}, step=0)
        self._probs = self.server.probabilities()
        self._snapshot.save()
        self._plan_round(trainer, self.server.server_round + 1)
        if trainer.is_global_zero and self.progress:
            self._bar = tqdm(
                total=trainer.max_epochs,
                initial=self.server.server_round,
                desc="rounds",
                position=0,
                dynamic_ncols=True,
            )

    # -- 1) configure_train ------------------------------------------------------------------
    def _plan_round(self, trainer: pl.Trainer, rnd: int) -> None:
        """Sample round `rnd`'s clients and hand this process its share to the datamodule.

        Done before the round starts: Lightning fetches the first batch before `on_train_epoch_start`.
        """
        dm = trainer.datamodule
        clients = sample_clients(self.seed, rnd, dm.num_clients_effective, self.fraction)
        mine = clients[trainer.global_rank :: trainer.world_size]
        # Lightning syncs the processes at every step, so all of them must run as many steps
        padding = -(-len(clients) // trainer.world_size) - len(mine)
        dm.set_round_plan(rnd, [(c, self.local_steps) for c in mine] + [(IDLE, self.local_steps)] * padding)
        self._round = {"round": rnd, "clients": clients, "mine": mine, "rows": {}}

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
        if self._client is None or self._client["id"] != client:
            self._snapshot.restore()  # every client starts from the round's global weights
            indices = sample_seed_indices(
                self.seed, self._round["round"], client, self.local_steps, self._probs, self.k
            )
            self._client = {
                "id": client,
                "acc": np.zeros(self.k, dtype=np.float64),
                "indices": indices,
                "loss": 0.0,
                "steps": 0,
                "skipped": 0,
            }
        j = int(self._client["indices"][int(batch["local_step"])])
        pl_module.seed_choice = (j, self.pool[j])
        self._step_t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(batch["client_id"]) == IDLE:
            return
        self._step_times.append(time.perf_counter() - self._step_t0)
        step = outputs["zo"]
        c = self._client
        if step.skipped:
            c["skipped"] += 1
        else:
            c["acc"][step.seed_index] += step.projected_grad
            c["loss"] += step.loss
            c["steps"] += 1
        if getattr(self, "_steps_bar", None) is not None and trainer.is_global_zero and self.progress:
            self._steps_bar.update(1)
            self._steps_bar.set_postfix(client=c["id"], loss=f"{step.loss:.3f}")
        if int(batch["local_step"]) == int(batch["num_steps"]) - 1:
            up = Uplink(self._round["round"], c["id"], c["acc"].astype(np.float32))
            wire = encode_uplink(up, self.pool.fingerprint)
            got = decode_uplink(wire, self.k, self.pool.fingerprint, expected_round=self._round["round"])
            self._round["rows"][c["id"]] = (got.scalars, c["loss"], c["steps"], c["skipped"], len(wire))
            self._client = None

    # -- 3) aggregate_train + 4) global update -------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        rnd, clients = self._round["round"], self._round["clients"]
        table = torch.zeros(len(clients), self.k + STATS, dtype=torch.float64)
        for row, cid in enumerate(clients):  # each process fills only its own clients' rows ...
            if cid in self._round["rows"]:
                scalars, loss, steps, skipped, nbytes = self._round["rows"][cid]
                table[row, : self.k] = torch.from_numpy(scalars.astype(np.float64))
                table[row, self.k :] = torch.tensor([loss, steps, skipped, nbytes], dtype=torch.float64)
        table = self._exact_sum(trainer, table)  # ... so the all-reduce sum adds only zeros: exact
        sizes = trainer.datamodule.client_sizes
        uplinks = [
            Uplink(rnd, cid, table[row, : self.k].numpy().astype(np.float32))
            for row, cid in enumerate(clients)
        ]
        down = self.server.aggregate_train(uplinks, [sizes[c] for c in clients])
        wire = encode_downlink(down, self.pool.fingerprint)
        down = decode_downlink(wire, self.k, self.pool.fingerprint, expected_round=rnd)
        self._snapshot.restore()
        apply_scalars(
            pl_module.perturber, self.pool, down.scalars, pl_module.hparams.lr, pl_module.hparams.weight_decay
        )
        self._snapshot.save()
        self.downlinks.append(down.scalars)
        self._probs = down.probabilities
        stats = table[:, self.k :].numpy()
        steps = stats[:, 1].sum()
        metrics = {
            "train/loss": float(stats[:, 0].sum() / max(steps, 1)),
            "fed/uplink_bytes_mean": float(stats[:, 3].mean()),
            "fed/uplink_bytes_max": float(stats[:, 3].max()),
            "fed/downlink_bytes": float(len(wire)),
            "fed/seeds_touched": float(np.count_nonzero(down.scalars)),
            "zo/skipped_steps": float(stats[:, 2].sum()),
            "time/round_s": time.perf_counter() - self._round["t0"],
        }
        last = rnd == trainer.max_epochs
        if last or (self.eval_every and rnd % self.eval_every == 0):
            metrics["eval/loss"] = self._eval_loss(trainer, pl_module)
        if (last and self.rouge_at_end) or (self.rouge_every and rnd % self.rouge_every == 0):
            metrics.update(self._rouge(trainer, pl_module, rnd))
        h = self.history
        h["train_loss"].append(metrics["train/loss"])
        h["eval_loss"].append(metrics.get("eval/loss"))
        h["uplink_bytes"].append(stats[:, 3].tolist())
        h["downlink_bytes"].append(len(wire))
        h["skipped_steps"].append(int(stats[:, 2].sum()))
        if down.probabilities is not None:
            h["probabilities"].append(np.sort(down.probabilities)[::-1].tolist())
        self._log(trainer, metrics, step=rnd)
        if trainer.is_global_zero:
            if self.progress:
                self._steps_bar.close()
                self._bar.update(1)
                self._bar.set_postfix(
                    train_loss=f"{metrics['train/loss']:.4f}",
                    eval_loss=f"{metrics.get('eval/loss', float('nan')):.4f}",
                )
            self.write_summary(trainer, pl_module)
        self._plan_round(trainer, rnd + 1)

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            if self.progress:
                self._bar.close()
            summary = self.write_summary(trainer, pl_module, final=True)
            print(
                f"\n[kit] run directory: {self.run_dir}\n[kit] {json.dumps(_headline(summary))}", flush=True
            )
        self._snapshot.cleanup()

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _exact_sum(trainer: pl.Trainer, table: torch.Tensor) -> torch.Tensor:
        if trainer.world_size == 1:
            return table
        return trainer.strategy.reduce(table.to(trainer.strategy.root_device), reduce_op="sum").cpu()

    @torch.no_grad()
    def _eval_loss(self, trainer: pl.Trainer, pl_module) -> float:
        """Mean per-example response loss on the held-out set, batches split over processes."""
        loader = trainer.datamodule.eval_dataloader(self.eval_batch_size)
        losses = torch.zeros(len(loader.dataset), dtype=torch.float64)
        start = 0
        for i, batch in enumerate(loader):
            n = batch["input_ids"].shape[0]
            if i % trainer.world_size == trainer.global_rank:
                batch = {k: v.to(pl_module.device) for k, v in batch.items() if torch.is_tensor(v)}
                losses[start : start + n] = pl_module.example_losses(batch).double().cpu()
            start += n
        losses = self._exact_sum(trainer, losses)
        finite = losses[torch.isfinite(losses)]
        return float(finite.mean()) if finite.numel() else float("nan")

    def _rouge(self, trainer: pl.Trainer, pl_module, rnd: int) -> dict:
        """Zero-shot Rouge-L (0-100) of the current global model; process 0 generates, others wait."""
        if not trainer.is_global_zero:
            return {}
        from eval.evaluate import evaluate
        from kit.models import load_tokenizer
        from kit.paths import data_root

        dm = trainer.datamodule
        out_dir = self.run_dir / "eval" / f"round_{rnd}"
        results = evaluate(
            pl_module.net,
            load_tokenizer(pl_module.hparams.model),
            self.rouge_suites or [dm.dataset],
            data_root=data_root(dm.data_root),
            limit=self.rouge_limit,
            seed=dm.seed,
            out_dir=out_dir,
            progress=self.progress,
        )
        self.rouge = {name: r["rougeL"] for name, r in results.items()}
        self.history.setdefault("rougeL", []).append({"round": rnd, **self.rouge})
        _log_rouge_tables(trainer, results, out_dir)
        return {f"eval/rougeL_{name}": score for name, score in self.rouge.items()}

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict, step: int) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({**metrics, "round": step}, step=step)

    def write_summary(self, trainer: pl.Trainer, pl_module, final: bool = False) -> dict:
        """summary.json: the run's figures that scripts and notebooks rely on."""
        h = self.history
        ups = [b for rnd in h["uplink_bytes"] for b in rnd]
        evals = [e for e in h["eval_loss"] if e is not None]
        dm = trainer.datamodule
        summary = {
            "rounds": self.server.server_round,
            "clients_per_round": max(1, int(dm.num_clients_effective * self.fraction)),
            "num_clients": dm.num_clients_effective,
            "K": self.k,
            "local_steps": self.local_steps,
            "method": "FedKSeed-Pro" if self.server.pro else "FedKSeed",
            "seed": self.seed,
            "uplink_bytes_per_client_round": {
                "mean": float(np.mean(ups)) if ups else 0.0,
                "max": int(max(ups)) if ups else 0,
            },
            "uplink_bytes_dense": 36 + 4 * self.k,
            "downlink_bytes_per_round": float(np.mean(h["downlink_bytes"])) if h["downlink_bytes"] else 0.0,
            "train_loss_per_round": h["train_loss"],
            "eval_loss_per_round": h["eval_loss"],
            "eval_loss_before": self.eval_loss_before,
            "eval_loss_after": evals[-1] if evals else None,
            "skipped_steps": int(sum(h["skipped_steps"])),
            "rougeL": self.rouge or None,
            "rougeL_per_round": h.get("rougeL", []),
            "pro_probabilities_sorted": h["probabilities"] if self.server.pro else None,
            "dropped_examples": dm.dropped,
            "wall_time_s": time.perf_counter() - self._t0,
            "mean_step_time_s": float(np.mean(self._step_times)) if self._step_times else None,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            "world_size": trainer.world_size,
            "finished": final,
        }
        if final:
            summary["global_weights_sha256"] = weights_digest(pl_module.net)
        path = self.run_dir / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)
        return summary

    # -- checkpoint: the seed history, not the weights -----------------------------------------
    def state_dict(self) -> dict:
        return {
            "server": self.server.state_dict(),
            "downlinks": [torch.from_numpy(g.copy()) for g in self.downlinks],
            "history": self.history,
            "eval_loss_before": self.eval_loss_before,
            "rouge": self.rouge,
        }

    def load_state_dict(self, state: dict) -> None:
        self.server.load_state_dict(state["server"])
        self.downlinks = [g.numpy().astype(np.float32) for g in state["downlinks"]]
        self.history = state["history"]
        self.eval_loss_before = state["eval_loss_before"]
        self.rouge = state["rouge"]


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's weights in parameter order: equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _log_rouge_tables(trainer: pl.Trainer, results: dict, out_dir: Path) -> None:
    """W&B tables of per-task Rouge-L and the first generations of each suite (when W&B is on)."""
    from lightning.pytorch.loggers import WandbLogger

    columns = ["task", "prompt", "reference", "prediction", "rougeL"]
    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        for name, result in results.items():
            rows = [[task, r["rougeL"], r["n"]] for task, r in sorted(result["per_task"].items())]
            logger.log_table(f"rougeL/{name}_per_task", columns=["task", "rougeL", "n"], data=rows)
            lines = (out_dir / f"generations_{name}.jsonl").read_text().splitlines()[:32]
            gens = [json.loads(line) for line in lines]
            logger.log_table(
                f"rougeL/{name}_generations", columns=columns, data=[[g[c] for c in columns] for g in gens]
            )


def _headline(summary: dict) -> dict:
    keys = (
        "rounds",
        "K",
        "uplink_bytes_per_client_round",
        "downlink_bytes_per_round",
        "eval_loss_before",
        "eval_loss_after",
        "rougeL",
        "wall_time_s",
    )
    return {k: summary[k] for k in keys}
