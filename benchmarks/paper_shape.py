"""A model directory of the paper's DataJuicer-1.3B shape, built offline: random weights and a 32,000-id
tokenizer, so a paper-shaped run (`fedkseed fit` on it) needs no model hub.

    python benchmarks/paper_shape.py OUT_DIR [--layers 24] [--vocab 32000]

The tokenizer is a byte-level BPE trained here with Hugging Face `tokenizers` on the Dolly-15K texts
(instruction, context, response of every record; $FEDKSEED_DATA_ROOT) to exactly `--vocab` ids
(special tokens <s>, </s>, <unk> included; <unk> never used by a byte-level model), wrapped as a
`PreTrainedTokenizerFast` with bos <s>, eos </s> and pad = eos. The model is `common.datajuicer_config`
(LLaMA, hidden 2048, MLP 5504, 16 heads, vocab 32000, untied head) with torch's default random init
(seed 0), saved as float32 safetensors in 1 GB shards. Figures from such a model are speed and memory,
never quality.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import data_root, datajuicer_config, random_llama  # noqa: E402

SPECIALS = ["<s>", "</s>", "<unk>"]


def dolly_texts() -> list[str]:
    from kit.data.dolly import load_dolly

    out = []
    for r in load_dolly(data_root()):
        out.extend(t for t in (r.get("instruction"), r.get("context"), r.get("response")) if t)
    return out


def build_tokenizer(vocab: int = 32000):
    """A byte-level BPE tokenizer of exactly `vocab` ids trained on Dolly (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(dolly_texts(), trainer)
    if tok.get_vocab_size() != vocab:
        raise RuntimeError(f"Dolly gave a BPE vocabulary of {tok.get_vocab_size()} ids, not {vocab}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def build(out: Path, layers: int = 24, vocab: int = 32000, config=None, device: str = "cpu") -> Path:
    """Write the tokenizer and a random model of the shape (or of `config`) to `out`; returns `out`.
    `device`: where the random weights are drawn (a GPU draws 1.3B in a second; the values differ
    from a CPU's, which only speed and memory figures may rely on)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokenizer = build_tokenizer(vocab)
    tokenizer.save_pretrained(out)
    t1 = time.perf_counter()
    config = config or datajuicer_config(layers)
    config.vocab_size = vocab
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    if device == "cpu":
        model = random_llama(config)
    else:
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config).float().eval()
    model.save_pretrained(out, max_shard_size="1GB")
    n = sum(p.numel() for p in model.parameters())
    print(
        f"[paper_shape] {out}: {n / 1e9:.3f} B parameters, tokenizer {vocab} ids "
        f"({t1 - t0:.0f} s), model ({time.perf_counter() - t1:.0f} s)",
        file=sys.stderr,
    )
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    build(args.out, args.layers, args.vocab)
