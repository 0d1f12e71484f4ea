"""notebooks/runs.py: finding and loading run directories, and the PEFT baselines' payload sizes."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import REPO


def _load_runs_module():
    spec = importlib.util.spec_from_file_location("notebook_runs", REPO / "notebooks" / "runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


R = _load_runs_module()


def _fake_run(
    path: Path, *, pro: bool = False, dataset: str = "ni", metrics: str | None = None, **summary
) -> Path:
    path.mkdir(parents=True)
    probs = [[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]] if pro else None
    base = {
        "rounds": 2,
        "K": 3,
        "method": "FedKSeed-Pro" if pro else "FedKSeed",
        "eval_loss_before": 2.0,
        "eval_loss_after": 1.5,
        "train_loss_per_round": [1.9, 1.7],
        "eval_loss_per_round": [1.8, 1.5],
        "uplink_bytes_per_client_round": {"mean": 48.0, "max": 54},
        "downlink_bytes_per_round": 60.0,
        "pro_probabilities_sorted": probs,
    }
    (path / "summary.json").write_text(json.dumps(base | summary))
    config = {
        "model": {"model": "org/Some-Model"},
        "data": {"dataset": dataset, "dirichlet_alpha": 0.5},
        "fed": {"num_seeds": 3, "pro": pro},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (path / "metrics.csv").write_text(metrics)
    return path


# -- PEFT payloads ----------------------------------------------------------------------------------
def test_lora_payload_counted_by_hand():
    # LoRA r=8 on q_proj and v_proj (both d_in = d_out = hidden under multi-head attention):
    #   params = 2 modules * r * (d_in + d_out) * layers
    #   DataJuicer-1.3B: 2 * 8 * (2048 + 2048) * 24 = 1_572_864 params -> * 4 B = 6_291_456 B (6 MiB)
    #   LLaMA-3B:        2 * 8 * (3200 + 3200) * 26 = 2_662_400 params -> * 4 B = 10_649_600 B
    assert R.peft_payload_bytes("DataJuicer-1.3B")["FedIT (LoRA r=8, q/v)"] == 6_291_456
    assert R.peft_payload_bytes("LLaMA-3B")["FedIT (LoRA r=8, q/v)"] == 10_649_600


def test_prompt_and_ptuning_payloads_counted_by_hand():
    dj = R.peft_payload_bytes("DataJuicer-1.3B")
    # prompt tuning: 10 virtual tokens * hidden 2048 * 4 B
    assert dj["FedPrompt (prompt tuning, 10 tokens)"] == 10 * 2048 * 4
    # P-Tuning: the 10 token embeddings + an MLP encoder of three h x h Linear layers with biases
    assert dj["FedPTuning (P-Tuning, 10 tokens)"] == (10 * 2048 + 3 * (2048 * 2048 + 2048)) * 4


def test_lora_under_grouped_query_attention_uses_the_kv_width():
    arch = R.LlamaArch(hidden=64, layers=2, heads=8, intermediate=128, vocab=100, kv_heads=2)
    # q: 64 -> 64, v: 64 -> 16 (2 of 8 heads): 8 * ((64 + 64) + (64 + 16)) * 2 layers
    assert R.peft_param_counts(arch)["FedIT (LoRA r=8, q/v)"] == 8 * (128 + 80) * 2


@pytest.mark.parametrize("name", sorted(R.MODEL_CONFIGS))
def test_full_model_size_matches_transformers(name):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    a = R.MODEL_CONFIGS[name]
    config = LlamaConfig(
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        intermediate_size=a.intermediate,
        vocab_size=a.vocab,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):  # shapes only, no memory
        n = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert R.peft_payload_bytes(name)["FedAvg / FedMeZO (full model)"] == 4 * n == 4 * a.num_parameters()


# -- finding and loading runs -----------------------------------------------------------------------
def test_find_runs_finds_nested_run_dirs_once(tmp_path):
    a = _fake_run(tmp_path / "sweep" / "a")
    b = _fake_run(tmp_path / "sweep" / "deeper" / "still" / "b")
    c = _fake_run(tmp_path / "elsewhere" / "c")
    (tmp_path / "sweep" / "not-a-run").mkdir()
    found = R.find_runs([tmp_path / "sweep", c, a, tmp_path / "missing"])
    assert found == [a.resolve(), b.resolve(), c.resolve()]
    env_style = os.pathsep.join([str(c), str(tmp_path / "sweep")])
    assert R.find_runs(env_style) == [c.resolve(), a.resolve(), b.resolve()]
    assert R.find_runs(tmp_path / "sweep" / "not-a-run") == []


def test_load_run_collapses_rows_per_round_and_reads_config(tmp_path):
    csv = (
        "eval/loss,eval/rougeL_ni,eval/rougeL_paper_ni,round,step,train/loss\n"
        "2.0,,,0,0,\n1.8,,,1,1,1.9\n,11.0,9.0,1,1,\n1.5,,,2,2,1.7\n,12.5,14.0,2,2,\n"
    )
    run = R.load_run(_fake_run(tmp_path / "r", metrics=csv))
    m = run["metrics"]
    assert list(m.index) == [0, 1, 2] and m.loc[1, "eval/rougeL_ni"] == 11.0 and m.loc[2, "eval/loss"] == 1.5
    assert run["config"]["fed"]["num_seeds"] == 3
    assert R.rouge_l(run) == {"ni": 12.5}  # from the metrics when summary.json has none
    assert R.rouge_l(run, "rougeL_paper") == {"ni": 14.0}  # the paper's scorer, not a suite "paper_ni"


def test_learning_curves_average_seeds_per_method(tmp_path):
    header = "eval/loss,fed/downlink_bytes,fed/dropped,fed/late,fed/sampled,fed/uplink_bytes_mean,round\n"
    one = header + "2.0,,,,,,0\n1.8,60.0,0.0,0.0,2.0,48.0,1\n1.6,60.0,1.0,0.0,2.0,50.0,2\n"
    two = header + "2.0,,,,,,0\n1.6,60.0,0.0,0.0,2.0,40.0,1\n1.2,60.0,0.0,0.0,2.0,40.0,2\n"
    runs = R.load_runs(
        [_fake_run(tmp_path / "a", metrics=one, seed=1), _fake_run(tmp_path / "b", metrics=two, seed=2)]
    )
    curves = R.learning_curves(runs).set_index("round")
    assert curves["seeds"].tolist() == [2, 2, 2] and set(curves["method"]) == {"FedKSeed"}
    assert curves["eval_loss"].tolist() == pytest.approx([2.0, 1.7, 1.4])
    assert curves.loc[2, "eval_loss_std"] == pytest.approx(np.std([1.6, 1.2], ddof=1))
    # run a: 2 x 48 + 60 = 156, then 1 arrived x 50 + 60 = 110 -> 266; run b: 140, then 280
    assert curves["cumulative_bytes"].tolist() == pytest.approx([0.0, 148.0, 273.0])


def test_learning_curves_without_byte_counts_keep_the_losses(tmp_path):
    run = R.load_run(_fake_run(tmp_path / "r", metrics="eval/loss,round\n2.0,0\n1.5,1\n"))
    curves = R.learning_curves([run])
    assert curves["eval_loss"].tolist() == [2.0, 1.5]
    assert curves["cumulative_bytes"].isna().tolist() == [False, True]  # round 0: 0 bytes; round 1: unknown


def test_load_run_without_metrics_uses_the_summary(tmp_path):
    run = R.load_run(_fake_run(tmp_path / "r", rougeL={"ni": 30.0, "dolly": 20.0}, rougeL_paper={"ni": 3.0}))
    assert run["metrics"]["eval/loss"].tolist() == [2.0, 1.8, 1.5]
    assert R.rouge_l(run) == {"ni": 30.0, "dolly": 20.0}
    assert R.rouge_l(run, "rougeL_paper") == {"ni": 3.0}
    table = R.comparison_table([run])
    assert table.loc["r", "Rouge-L ni"] == 30.0 and table.loc["r", "Rouge-L (paper) ni"] == 3.0


def test_comparison_table_and_pro_stats(tmp_path):
    runs = R.load_runs(
        [_fake_run(tmp_path / "x" / "run"), _fake_run(tmp_path / "y" / "run", pro=True, dataset="dolly")]
    )
    table = R.comparison_table(runs)
    assert list(table.index) == ["x/run", "y/run"]  # same names get their parent folder
    assert table["method"].tolist() == ["FedKSeed", "FedKSeed-Pro"]
    assert table["scenario"].tolist() == ["NI", "Dolly α=0.5"] and set(table["model"]) == {"Some-Model"}
    assert not any(c.startswith("Rouge-L") for c in table.columns)
    stats = R.pro_stats(runs[1]["summary"])
    assert stats["max/min"].tolist() == pytest.approx([2.5, 2.0])
    assert stats["K·max"].tolist() == pytest.approx([1.5, 1.2])
    assert R.pro_stats(runs[0]["summary"]).empty
    assert R.run_payload_bytes(runs)["y/run downlink"] == 60.0
    assert R.human_bytes(54) == "54 B" and R.human_bytes(6_291_456) == "6 MiB"
