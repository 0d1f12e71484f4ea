"""Load fedkseed run directories (summary.json, metrics.csv, config.yaml) for the analysis notebook.

A run directory is any folder with a `summary.json`. Nothing here needs W&B or a network.
Payload sizes of the PEFT baselines are computed from the models' architectures, not copied from papers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

RUNS_ENV = "FEDKSEED_RUNS"


# -- finding and loading runs -------------------------------------------------------------------
def find_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories in `paths` (run dirs or folders holding them at any depth), in order, no repeats.

    A string is split on `os.pathsep`, like the `FEDKSEED_RUNS` variable.
    """
    if isinstance(paths, str):
        paths = [p for p in paths.split(os.pathsep) if p]
    elif isinstance(paths, os.PathLike):
        paths = [paths]
    found: list[Path] = []
    for root in map(Path, paths):
        if (root / "summary.json").is_file():
            candidates = [root]
        else:
            candidates = sorted(p.parent for p in root.rglob("summary.json")) if root.is_dir() else []
        found += [p.resolve() for p in candidates if p.resolve() not in found]
    return found


def runs_from_env(default: str = "../runs") -> list[Path]:
    """The run directories named by `$FEDKSEED_RUNS` (default `../runs`, relative to the notebook)."""
    return find_runs(os.environ.get(RUNS_ENV, default))


def per_round(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per round (index `round`): the CSV logger may write several rows for one round."""
    if metrics.empty or "round" not in metrics:
        return metrics
    df = metrics.drop(columns=["step"], errors="ignore").dropna(subset=["round"])
    df = df.astype({"round": int}).groupby("round").last()  # last non-null value of each column
    return df.sort_index()


def _metrics_from_summary(summary: dict) -> pd.DataFrame:
    """Per-round metrics rebuilt from summary.json when a run has no metrics.csv."""
    rounds = range(len(summary.get("train_loss_per_round") or []) + 1)
    train = [None, *(summary.get("train_loss_per_round") or [])]
    evals = [summary.get("eval_loss_before"), *(summary.get("eval_loss_per_round") or [])]
    return pd.DataFrame(
        {"train/loss": train, "eval/loss": evals[: len(train)]},
        index=pd.Index(rounds, name="round"),
        dtype=float,
    )


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """`{"path", "name", "summary", "metrics", "config"}` of one run directory.

    `metrics` is metrics.csv collapsed to one row per round (round 0: the eval loss before training);
    `config` is the resolved config.yaml ({} when absent).
    """
    path = Path(path)
    summary = json.loads((path / "summary.json").read_text())
    csv = path / "metrics.csv"
    metrics = per_round(pd.read_csv(csv)) if csv.is_file() else _metrics_from_summary(summary)
    cfg_file = path / "config.yaml"
    config = (yaml.safe_load(cfg_file.read_text()) or {}) if cfg_file.is_file() else {}
    return {"path": path, "name": path.name, "summary": summary, "metrics": metrics, "config": config}


def load_runs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """`load_run` on each path; names made unique by prefixing the parent folder when they collide."""
    runs = [load_run(p) for p in paths]
    names = [r["name"] for r in runs]
    for r in runs:
        if names.count(r["name"]) > 1:
            r["name"] = f"{r['path'].parent.name}/{r['name']}"
    return runs


# -- describing runs ----------------------------------------------------------------------------
def _get(config: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def method(run: Mapping) -> str:
    return run["summary"].get("method") or str(_get(run["config"], "method", "fedkseed"))


def scenario(run: Mapping) -> str:
    """'NI', or 'Dolly α=0.5' (the Dirichlet α only partitions Dolly)."""
    dataset = str(_get(run["config"], "data.dataset", "?"))
    if dataset == "dolly":
        return f"Dolly α={_get(run['config'], 'data.dirichlet_alpha')}"
    return {"ni": "NI"}.get(dataset, dataset)


def model_name(run: Mapping) -> str:
    return str(_get(run["config"], "model.model", "?")).rstrip("/").split("/")[-1]


def rouge_l(run: Mapping, scorer: str = "rougeL") -> dict[str, float]:
    """Final Rouge-L (0-100) per suite: summary.json's `rougeL`, else the last `eval/rougeL_*` values.

    `scorer="rougeL_paper"`: the paper's scorer (pltrdy, eval/rouge.py) on the same generations.
    """
    found = run["summary"].get(scorer) or {}
    out = {k: (v.get(scorer) if isinstance(v, Mapping) else v) for k, v in found.items()}
    prefix = f"eval/{scorer}_"
    for col in run["metrics"].columns:
        suite = col.removeprefix(prefix)
        if scorer == "rougeL" and suite.startswith("paper_"):
            continue  # eval/rougeL_paper_<suite> is the other scorer's
        if col.startswith(prefix) and out.get(suite) is None and run["metrics"][col].notna().any():
            out[suite] = float(run["metrics"][col].dropna().iloc[-1])
    return {k: float(v) for k, v in out.items() if v is not None}


def comparison_table(runs: Iterable[Mapping]) -> pd.DataFrame:
    """One row per run: method, scenario, model, K, rounds, losses, Rouge-L (both scorers: `Rouge-L
    <suite>` is rouge-score's, `Rouge-L (paper) <suite>` pltrdy's), bytes per client-round."""
    rows = []
    for run in runs:
        s = run["summary"]
        up = s.get("uplink_bytes_per_client_round") or {}
        rows.append(
            {
                "run": run["name"],
                "method": method(run),
                "scenario": scenario(run),
                "model": model_name(run),
                "K": s.get("K"),
                "rounds": s.get("rounds"),
                "eval loss before": s.get("eval_loss_before"),
                "eval loss after": s.get("eval_loss_after"),
                "uplink B/client-round (mean)": up.get("mean"),
                "uplink B/client-round (max)": up.get("max"),
                "downlink B/round": s.get("downlink_bytes_per_round"),
                **{f"Rouge-L {suite}": v for suite, v in rouge_l(run).items()},
                **{f"Rouge-L (paper) {suite}": v for suite, v in rouge_l(run, "rougeL_paper").items()},
            }
        )
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).set_index("run")
    rouge = sorted(c for c in df.columns if c.startswith("Rouge-L"))
    rest = [c for c in df.columns if c not in rouge]
    return df[rest[:7] + rouge + rest[7:]]  # Rouge-L right after the eval losses


def learning_curves(runs: Iterable[Mapping]) -> pd.DataFrame:
    """Eval loss per round and cumulative bytes per (scenario, method), mean ± sample std over the runs'
    seeds, from each run's metrics.csv (`kit/compare/curves.py`, as `fedkseed compare`'s curves.csv)."""
    from kit.compare.curves import CURVE_COLUMNS, mean_curves, run_curve

    curves = [run_curve(scenario(r), method(r), int(r["summary"].get("seed") or 0), r["path"]) for r in runs]
    return pd.DataFrame(mean_curves(curves), columns=list(CURVE_COLUMNS))


def pro_stats(summary: Mapping) -> pd.DataFrame:
    """Per round of a Pro run: max/min probability ratio, K·max (1 = uniform), effective seeds exp(H)/K."""
    rows = []
    for rnd, probs in enumerate(summary.get("pro_probabilities_sorted") or [], start=1):
        k, entropy = len(probs), -sum(p * math.log(p) for p in probs if p > 0)
        rows.append(
            {
                "round": rnd,
                "max/min": probs[0] / probs[-1] if probs[-1] > 0 else math.inf,
                "K·max": k * probs[0],
                "effective seeds / K": math.exp(entropy) / k,
            }
        )
    return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame()


# -- communication of the PEFT baselines --------------------------------------------------------
@dataclass(frozen=True)
class LlamaArch:
    """The numbers of a LLaMA-style decoder that fix its parameter count."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    kv_heads: int | None = None  # None: multi-head attention (kv_heads = heads)
    tied_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden * (self.kv_heads or self.heads) // self.heads

    def num_parameters(self) -> int:
        h, kv = self.hidden, self.kv_dim
        attn = 2 * h * h + 2 * h * kv  # q, o: h x h; k, v: h x kv
        mlp = 3 * h * self.intermediate  # gate, up, down
        per_layer = attn + mlp + 2 * h  # + two RMSNorm weights
        embeddings = self.vocab * h * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * per_layer + h  # + final norm


MODEL_CONFIGS: dict[str, LlamaArch] = {
    # datajuicer/LLaMA-1B-dj-refine-150B: hidden 2048, 24 layers, 16 heads, vocab 32000 (~1.35B params)
    "DataJuicer-1.3B": LlamaArch(hidden=2048, layers=24, heads=16, intermediate=5504, vocab=32000),
    # openlm-research/open_llama_3b: hidden 3200, 26 layers, 32 heads, intermediate 8640 (~3.43B params)
    "LLaMA-3B": LlamaArch(hidden=3200, layers=26, heads=32, intermediate=8640, vocab=32000),
}


def peft_param_counts(arch: LlamaArch, lora_rank: int = 8, virtual_tokens: int = 10) -> dict[str, int]:
    """Trainable (= communicated) parameters of the paper's baselines, as PEFT builds them.

    LoRA on q_proj, v_proj: A (r x d_in) + B (d_out x r) per module and layer.
    P-Tuning: 10 virtual-token embeddings + PEFT's default MLP prompt encoder
    (Linear(h, h), Linear(h, h), Linear(h, h), with biases; encoder hidden size = h).
    Prompt tuning: 10 virtual-token embeddings. FedAvg / FedMeZO: every parameter.
    """
    h = arch.hidden
    lora = lora_rank * arch.layers * ((h + h) + (h + arch.kv_dim))  # q: h -> h, v: h -> kv_dim
    return {
        f"FedIT (LoRA r={lora_rank}, q/v)": lora,
        f"FedPTuning (P-Tuning, {virtual_tokens} tokens)": virtual_tokens * h + 3 * (h * h + h),
        f"FedPrompt (prompt tuning, {virtual_tokens} tokens)": virtual_tokens * h,
        "FedAvg / FedMeZO (full model)": arch.num_parameters(),
    }


def peft_payload_bytes(config_name: str | LlamaArch, bytes_per_param: int = 4) -> dict[str, int]:
    """Bytes each baseline sends per client per round (each way) with fp32 parameters.

    `config_name` is a key of `MODEL_CONFIGS` ("DataJuicer-1.3B", "LLaMA-3B") or a `LlamaArch`.
    """
    arch = MODEL_CONFIGS[config_name] if isinstance(config_name, str) else config_name
    return {k: n * bytes_per_param for k, n in peft_param_counts(arch).items()}


def run_payload_bytes(runs: Iterable[Mapping]) -> dict[str, float]:
    """Bytes per client per round of each run: mean uplink and the downlink every sampled client gets."""
    out: dict[str, float] = {}
    for run in runs:
        s = run["summary"]
        up = s.get("uplink_bytes_per_client_round") or {}
        out[f"{run['name']} uplink (mean)"] = float(up.get("mean") or 0)
        out[f"{run['name']} downlink"] = float(s.get("downlink_bytes_per_round") or 0)
    return out


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    units, i = ("B", "KiB", "MiB", "GiB"), 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.3g} {units[i]}"
