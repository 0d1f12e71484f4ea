"""Shared fixtures: tiny seeded Llama models for the math, the shipped data root for the data tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A 2-layer random Llama (~30k parameters) built from config: no download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.fixture
def tiny_model():
    return tiny_llama()


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("FEDKSEED_DATA_ROOT", SHARED_DATA))
    if not root.is_dir():
        pytest.fail(f"shared data not found at {root}; set FEDKSEED_DATA_ROOT")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved 1-layer random Llama with SmolLM2's tokenizer (real vocabulary, tiny weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kit.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# FedIT on one local epoch with overlong examples kept: clients of unequal step counts, skipped steps
FEDIT_ONE_EPOCH_KEEP = [
    "--method",
    "fedit",
    "--fed.local_epochs",
    "1",
    "--data.overlong",
    "keep",
    "--fed.rouge_at_end",
    "false",
]


def fed_args(model_dir: Path, data_root: Path, run_dir: Path, rounds: int = 3) -> list[str]:
    """`fedkseed fit` arguments of a tiny seeded FedKSeed-Pro federation on the shipped NI data."""
    return [
        "fit",
        "--seed_everything",
        "1",
        "--run_dir",
        str(run_dir),
        "--model.model",
        str(model_dir),
        "--model.lr",
        "1e-3",
        "--model.zo_eps",
        "1e-2",
        "--data.dataset",
        "ni",
        "--data.data_root",
        str(data_root),
        "--data.max_length",
        "128",
        "--data.eval_size",
        "16",
        "--fed.num_seeds",
        "64",
        "--fed.fraction",
        "0.05",
        "--fed.local_steps",
        "3",
        "--fed.progress",
        "false",
        "--method",
        "fedkseed-pro",
        "--fed.rouge_limit",
        "9",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        str(rounds),
    ]


def rouge_from_generations(path: Path) -> float:
    """Rouge-L (0-100) of a generations file re-scored with `rouge-score` itself, independently of
    `eval.rouge`: the F-measure with the Porter stemmer, 0 for an empty prediction, mean over examples."""
    import json

    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    scores = [
        scorer.score(r["reference"], r["prediction"])["rougeL"].fmeasure if r["prediction"].strip() else 0.0
        for r in rows
    ]
    return 100.0 * sum(scores) / len(scores)


def paper_rouge_from_generations(path: Path) -> float:
    """Rouge-L (0-100) of a generations file re-scored as the reference's `evaluations.py` scores,
    independently of `eval.rouge`: pltrdy `Rouge().get_scores([hyp], [ref])[0]["rouge-l"]["f"]`, 0 for an
    empty prediction or a ValueError, mean over examples."""
    import json

    from rouge import Rouge

    def score(hyp: str, ref: str) -> float:
        if len(hyp) == 0:
            return 0.0
        try:
            return Rouge().get_scores([hyp], [ref])[0]["rouge-l"]["f"]
        except ValueError:
            return 0.0

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return 100.0 * sum(score(r["prediction"], r["reference"]) for r in rows) / len(rows)


def method_overrides(name: str) -> dict:
    """recipes/methods/<name>.yaml as dotted overrides (what `-c recipes/methods/<name>.yaml` sets)."""
    import yaml

    tree = yaml.safe_load((REPO / "recipes" / "methods" / f"{name}.yaml").read_text())
    return {"method": tree["method"], **{f"model.{k}": v for k, v in tree.get("model", {}).items()}}


def method_cli(name: str) -> list[str]:
    """The same as `fedkseed fit` arguments."""
    import json

    return [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in method_overrides(name).items()]
