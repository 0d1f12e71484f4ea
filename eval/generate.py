"""Greedy generation for many prompts at once: length-sorted, left-padded batches that adapt to memory.

    from eval.generate import generate_batched
    generate_batched(model, tokenizer, ["### Instruction:\\nSay hi\\n\\n### Response:"], max_new_tokens=16)

The reference (`evaluations.py`) generates one prompt at a time with no attention mask. Batching gives
the same greedy tokens as long as the padding is invisible to the model: pads go on the left (so every
row's new tokens start at the same column), the attention mask hides them, and `generate` derives the
position ids from that mask, so each row sees positions 0..len-1 as it would alone (checked by
tests/test_eval_generate.py; padded matrix shapes may still flip a near-tie argmax in rare cases).
"""

from __future__ import annotations

import torch
from accelerate.utils import find_executable_batch_size
from tqdm.auto import tqdm
from transformers import GenerationConfig

CPU_BATCH_SIZE = 16
GPU_BATCH_SIZE = 64
TOKENS_PER_ROW = 256  # a batch holds at most batch_size * TOKENS_PER_ROW padded prompt tokens


def generate_batched(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of `prompts` (new tokens only, special tokens removed), in input order.

    A batch holds at most `batch_size` prompts and `batch_size * TOKENS_PER_ROW` padded prompt tokens,
    so long prompts go in smaller batches. `batch_size` is the first size tried (default 16 on CPU, 64
    on an accelerator); it is halved after an out-of-memory error, keeping the prompts already done.
    The tokenizer needs a pad token (`kit.models.load_tokenizer` sets one).
    """
    if not prompts:
        return []
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    outputs: list[str | None] = [None] * len(prompts)
    size = batch_size or (CPU_BATCH_SIZE if model.device.type == "cpu" else GPU_BATCH_SIZE)

    def halve() -> int:
        nonlocal size
        size //= 2
        return size

    @find_executable_batch_size(starting_batch_size=size, reduce_batch_size_fn=halve)
    @torch.inference_mode()
    def run(current: int) -> None:
        todo = [i for i, text in enumerate(outputs) if text is None]
        for rows in plan_batches(lengths, todo, current):
            texts = _generate(model, tokenizer, [prompts[i] for i in rows], config)
            for i, text in zip(rows, texts, strict=True):
                outputs[i] = text
            bar.update(len(rows))

    with tqdm(total=len(prompts), desc="generate", unit="ex", disable=not progress) as bar:
        run()
    return outputs


def plan_batches(lengths: list[int], indices: list[int], batch_size: int) -> list[list[int]]:
    """`indices` longest prompt first, cut into batches of at most `batch_size` prompts and
    `batch_size * TOKENS_PER_ROW` padded tokens (a longer prompt alone makes a batch).

    Longest first puts similar lengths together (little padding) and shows an out-of-memory error at once.
    """
    budget = batch_size * TOKENS_PER_ROW
    batches: list[list[int]] = []
    for i in sorted(indices, key=lambda i: -lengths[i]):
        last = batches[-1] if batches else []
        if last and len(last) < batch_size and (len(last) + 1) * lengths[last[0]] <= budget:
            last.append(i)
        else:
            batches.append([i])
    return batches


def _generate(model, tokenizer, prompts: list[str], config: GenerationConfig) -> list[str]:
    """One left-padded batch through `model.generate`; the decoded new tokens of each row."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    if is_prompt_learning(model):
        tokens = model.get_base_model().generate(
            **with_virtual_tokens(model, batch), generation_config=config
        )
        return tokenizer.batch_decode(tokens, skip_special_tokens=True)  # inputs_embeds: new tokens only
    tokens = model.generate(**batch, generation_config=config)
    return tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def is_prompt_learning(model) -> bool:
    """True for a peft model whose adapter is prompt learning (prompt tuning, P-tuning)."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def with_virtual_tokens(model, batch) -> dict:
    """The base model's `generate` inputs for a prompt-learning peft model: the virtual tokens' embeddings
    before each (left-padded) prompt's, as peft's own forward builds them, and an attention mask over both.

    peft's `generate` for prompt learning loses the prompt on cached decoding steps with this transformers
    (its greedy output differs from greedy decoding through peft's own forward), so the kit hands the
    base model the embeddings itself; tests/test_eval_generate.py checks it against the uncached forward.
    """
    rows = batch["input_ids"].shape[0]
    virtual = model.get_prompt(batch_size=rows)
    embeds = model.get_base_model().get_input_embeddings()(batch["input_ids"])
    mask = batch["attention_mask"]
    return {
        "inputs_embeds": torch.cat([virtual.to(embeds.dtype), embeds], dim=1),
        "attention_mask": torch.cat([mask.new_ones(rows, virtual.shape[1]), mask], dim=1),
    }
