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
