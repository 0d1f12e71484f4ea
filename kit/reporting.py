"""Reporting of a federation: per-round history, logger metrics, `summary.json`, W&B tables.

`summary.json` holds the figures that scripts, `fedkseed compare` and notebooks rely on; the keys
are the same for every method (`method`, `uplink_bytes_per_client_round`, `downlink_bytes_per_round`,
losses, Rouge-L, time, memory) plus the method's own (`kit.methods.Method.summary`).
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kit.federation.faults import RoundFaults
from kit.federation.messages import REASONS
from kit.federation.screening import Screening
from kit.identity import weights_digest

if TYPE_CHECKING:  # Lightning only where a Trainer logs: Flower's server reports with this module too
    import lightning.pytorch as pl


class RunReporter:
    """Keeps the per-round history (checkpointed) and writes it to the loggers and `summary.json`."""

    def __init__(self) -> None:
        self.history: dict[str, list] = {
            "train_loss": [],
            "eval_loss": [],
            "uplink_bytes": [],
            "downlink_bytes": [],
            "skipped_steps": [],
            "rougeL": [],
            "rougeL_paper": [],
            "faults": [],  # per round: missing (dropped, late) and rejected clients
        }
        self.eval_loss_before: float | None = None
        self.rouge: dict[str, float] = {}
        self.rouge_paper: dict[str, dict] = {}  # per suite: the paper scorer's mean and its overflow count
        self.step_times: list[float] = []
        self.t0 = time.perf_counter()

    def record_round(self, metrics: dict, uplink_bytes: list[int], downlink_bytes: int, skipped: int) -> None:
        h = self.history
        loss = metrics["train/loss"]
        h["train_loss"].append(None if math.isnan(loss) else loss)  # None: no client trained
        h["eval_loss"].append(metrics.get("eval/loss"))
        h["uplink_bytes"].append(uplink_bytes)
        h["downlink_bytes"].append(downlink_bytes)
        h["skipped_steps"].append(skipped)

    def record_faults(self, server_round: int, faults: RoundFaults, screening: Screening) -> dict:
        """Keep the round's missing and rejected clients; returns the logger metrics (`fed/...`).

        `fed/missing_clients` is the missing ids, space separated (a text column, CSV only).
        """
        rejected = {str(r.client): r.reason for r in screening.rejected}
        self.history["faults"].append(
            {
                "round": server_round,
                "dropped": faults.dropped,
                "late": faults.late,
                "rejected": rejected,
                "aggregated": len(screening.accepted),
            }
        )
        counts = screening.counts()
        return {
            "fed/sampled": float(len(faults.delays)),
            "fed/dropped": float(len(faults.dropped)),
            "fed/late": float(len(faults.late)),
            "fed/aggregated": float(len(screening.accepted)),
            "fed/rejected": float(sum(counts.values())),
            **{f"fed/rejected_{reason}": float(n) for reason, n in counts.items()},
            "fed/missing_clients": " ".join(str(c) for c in faults.missing),
        }

    def record_rouge(self, server_round: int, results: dict[str, dict]) -> dict[str, float]:
        """Keep the round's Rouge-L per suite (both scorers; round 0: the base model's, kept apart from
        the trained model's); returns the logger metrics."""
        rouge = {name: r["rougeL"] for name, r in results.items()}
        keys = ("rougeL_paper", "rougeL_paper_recursion_errors")
        if server_round > 0:
            self.rouge = rouge
            self.rouge_paper = {name: {k: r[k] for k in keys} for name, r in results.items()}
        paper = {name: r["rougeL_paper"] for name, r in results.items()}
        self.history["rougeL"].append({"round": server_round, **rouge})
        self.history["rougeL_paper"].append({"round": server_round, **paper})
        return {
            **{f"eval/rougeL_{name}": score for name, score in rouge.items()},
            **{f"eval/rougeL_paper_{name}": score for name, score in paper.items()},
        }

    def last_eval_loss(self) -> float:
        """The last measured eval loss (for progress bars on rounds without an eval)."""
        evals = [e for e in self.history["eval_loss"] if e is not None]
        return evals[-1] if evals else (self.eval_loss_before or float("nan"))

    @staticmethod
    def log(trainer: pl.Trainer, metrics: dict, step: int) -> None:
        from lightning.pytorch.loggers import CSVLogger

        if trainer.is_global_zero:
            numbers = {k: v for k, v in metrics.items() if not isinstance(v, str)}
            for logger in trainer.loggers:
                logged = metrics if isinstance(logger, CSVLogger) else numbers  # text columns: CSV only
                logger.log_metrics({**logged, "round": step}, step=step)
                logger.save()  # on disk before the round's checkpoint (Lightning flushes every 100 steps)

    def write_summary(self, path: Path, facts: dict, net: torch.nn.Module | None = None) -> dict:
        """Write `summary.json` atomically from the history and the run's `facts`; with `net` (the
        final model) also its weights digest."""
        h = self.history
        ups = [b for rnd in h["uplink_bytes"] for b in rnd]
        evals = [e for e in h["eval_loss"] if e is not None]
        summary = {
            **facts,
            "uplink_bytes_per_client_round": {
                "mean": float(np.mean(ups)) if ups else 0.0,
                "max": int(max(ups)) if ups else 0,
            },
            "downlink_bytes_per_round": float(np.mean(h["downlink_bytes"])) if h["downlink_bytes"] else 0.0,
            "total_bytes": int(sum(ups) + sum(h["downlink_bytes"])),
            "train_loss_per_round": h["train_loss"],
            "eval_loss_per_round": h["eval_loss"],
            "eval_loss_before": self.eval_loss_before,
            "eval_loss_after": evals[-1] if evals else None,
            "skipped_steps": int(sum(h["skipped_steps"])),
            "missing_clients_per_round": h["faults"],
            "rejected_uplinks": {
                reason: sum(list(f["rejected"].values()).count(reason) for f in h["faults"])
                for reason in REASONS
            },
            "rounds_without_update": sum(1 for f in h["faults"] if f["aggregated"] == 0),
            "rougeL": self.rouge or None,
            "rougeL_paper": {k: v["rougeL_paper"] for k, v in self.rouge_paper.items()} or None,
            "rougeL_paper_recursion_errors": {
                k: v["rougeL_paper_recursion_errors"] for k, v in self.rouge_paper.items()
            }
            or None,
            "rougeL_round": max((e["round"] for e in h["rougeL"] if e["round"] > 0), default=None),
            "rougeL_before": _round_zero(h["rougeL"]),
            "rougeL_paper_before": _round_zero(h["rougeL_paper"]),
            "rougeL_per_round": h["rougeL"],
            "rougeL_paper_per_round": h["rougeL_paper"],
            "wall_time_s": time.perf_counter() - self.t0,
            "mean_step_time_s": float(np.mean(self.step_times)) if self.step_times else None,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            "finished": net is not None,
        }
        if net is not None:
            summary["global_weights_sha256"] = weights_digest(net)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)
        return summary

    def state_dict(self) -> dict:
        return {
            "history": self.history,
            "eval_loss_before": self.eval_loss_before,
            "rouge": self.rouge,
            "rouge_paper": self.rouge_paper,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = {**self.history, **state["history"]}
        self.eval_loss_before = state["eval_loss_before"]
        self.rouge = state["rouge"]
        self.rouge_paper = state.get("rouge_paper", {})  # checkpoints from before the paper's scorer


def log_rouge_tables(trainer: pl.Trainer, results: dict, out_dir: Path) -> None:
    """W&B tables of per-task Rouge-L and the first generations of each suite (when W&B is on)."""
    from lightning.pytorch.loggers import WandbLogger

    columns = ["task", "prompt", "reference", "prediction", "rougeL", "rougeL_paper"]
    per_task = ["task", "rougeL", "rougeL_paper", "rougeL_paper_recursion_errors", "n"]
    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        for name, result in results.items():
            rows = [[task, *(r[c] for c in per_task[1:])] for task, r in sorted(result["per_task"].items())]
            logger.log_table(f"rougeL/{name}_per_task", columns=per_task, data=rows)
            lines = (out_dir / f"generations_{name}.jsonl").read_text().splitlines()[:32]
            gens = [json.loads(line) for line in lines]
            logger.log_table(
                f"rougeL/{name}_generations", columns=columns, data=[[g[c] for c in columns] for g in gens]
            )


HEADLINE = (
    "method",
    "rounds",
    "uplink_bytes_per_client_round",
    "downlink_bytes_per_round",
    "eval_loss_before",
    "eval_loss_after",
    "rougeL_before",
    "rougeL",
    "rougeL_paper_before",
    "rougeL_paper",
    "wall_time_s",
)


def _round_zero(per_round: list[dict]) -> dict | None:
    """The base model's scores per suite (the entry of round 0), or None when not measured."""
    return next(({k: v for k, v in r.items() if k != "round"} for r in per_round if r["round"] == 0), None)


def headline(summary: dict) -> dict:
    """The few figures printed at the end of a run (the base model's Rouge-L where it was measured)."""
    shown = (k for k in HEADLINE if summary.get(k) is not None or not k.endswith("_before"))
    return {k: summary.get(k) for k in shown}
