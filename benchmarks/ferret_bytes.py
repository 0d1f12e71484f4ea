"""Ferret's bytes per client per round at the paper's scale, by encoding its messages (no weights needed).

    python benchmarks/ferret_bytes.py [--k 200]

The paper's models are built on the meta device (shapes only): DataJuicer-1.3B (`common.datajuicer_config`)
and LLaMA-3B (openlm-research/open_llama_3b: hidden 3200, MLP 8640, 26 layers, 32 heads, vocab 32000).
Their parameters are grouped into Ferret's blocks (`kit.methods.ferret.group_blocks`), then an uplink is
encoded (`kit.methods.ferret_payload.encode`) at both ends of what a client can send: two seeds in every
block (the authors' floor) and all K seeds in every block. A real uplink lies between, set by its blocks'
update norms (n_b = max(floor(||Delta_b|| / max ||Delta|| * K), 2)); the downlink is the union of the
sampled clients' seeds, at most the all-K message. One JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import datajuicer_config  # noqa: E402

from kit.federation.messages import UPLINK  # noqa: E402
from kit.methods.ferret import group_blocks  # noqa: E402
from kit.methods.ferret_payload import Coefficients, encode  # noqa: E402


def llama3b_config():
    """openlm-research/open_llama_3b's shape (its config.json)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000,
        hidden_size=3200,
        intermediate_size=8640,
        num_hidden_layers=26,
        num_attention_heads=32,
        num_key_value_heads=32,
        tie_word_embeddings=False,
    )


def sizes_of(config) -> list[int]:
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return [p.numel() for p in model.parameters()]


def uplink_bytes(blocks: int, per_block: int, k: int) -> int:
    idx = tuple(np.arange(per_block) for _ in range(blocks))
    val = tuple(np.ones(per_block, dtype=np.float32) for _ in range(blocks))
    return len(encode(UPLINK, Coefficients(1, 0, idx, val), k, b"\0" * 8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=200, help="K seeds (allen4747/Ferret scripts/ferret.sh: 200)")
    args = ap.parse_args()
    for name, config in (("datajuicer-1.3b", datajuicer_config()), ("llama-3b", llama3b_config())):
        sizes = sizes_of(config)
        blocks = group_blocks(sizes)
        print(
            json.dumps(
                {
                    "model": name,
                    "parameters": sum(sizes),
                    "K": args.k,
                    "blocks": len(blocks),
                    "uplink_bytes_min": uplink_bytes(len(blocks), 2, args.k),
                    "uplink_bytes_max": uplink_bytes(len(blocks), args.k, args.k),
                    "float32_model_bytes": 4 * sum(sizes),
                }
            )
        )


if __name__ == "__main__":
    main()
