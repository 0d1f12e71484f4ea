"""Examples to token ids with response-only labels, and right-padded batches.

Masking follows the reference (`utils_data/llm_dataset.py`): tokenise the prompt and prompt + response
separately and mask the first len(tokens(prompt)) positions of the latter (the BOS too, where the tokenizer
adds one). The EOS is appended as an id, not as text, and the attention mask comes from lengths, so the
final EOS is trained on even when the pad token is the EOS token (SmolLM2).
"""

from __future__ import annotations

from functools import partial

import torch

from kit.data.examples import Example

IGNORE_INDEX = -100


def encode_example(tokenizer, ex: Example, max_length: int) -> dict | None:
    """`input_ids` and `labels` (1-D long tensors) of one example; None when the prompt alone fills
    `max_length` tokens (no response token would be trained on)."""
    return encode_each(tokenizer, [ex], max_length)[0]


def encode_all(tokenizer, examples: list[Example], max_length: int) -> tuple[list[dict], int]:
    """The encodings of `examples` that fit, in order, and how many were dropped (prompt too long)."""
    encoded = encode_each(tokenizer, examples, max_length)
    kept = [item for item in encoded if item is not None]
    return kept, len(encoded) - len(kept)


def encode_each(
    tokenizer, examples: list[Example], max_length: int, keep_overlong: bool = False
) -> list[dict | None]:
    """`encode_example` for each of `examples`, with batched tokenizer calls; prompt + response is
    tokenised only for the examples whose prompt fits (tokenisation dominates data setup time).

    `keep_overlong`: an example whose prompt fills `max_length` is kept instead of None, truncated to
    `max_length` with every label ignored, as the reference's `utils_data/llm_dataset.py` keeps it (its
    loss is then NaN: a step on it alone is spent and skipped).
    """
    ids = partial(tokenizer, return_attention_mask=False, return_token_type_ids=False)
    prompts = ids([ex.prompt for ex in examples])["input_ids"] if examples else []
    fits = [i for i, prompt_ids in enumerate(prompts) if len(prompt_ids) < max_length or keep_overlong]
    fulls = ids([examples[i].prompt + examples[i].response for i in fits])["input_ids"] if fits else []
    encoded: list[dict | None] = [None] * len(examples)
    for i, full_ids in zip(fits, fulls, strict=True):
        input_ids = torch.tensor((full_ids + [tokenizer.eos_token_id])[:max_length], dtype=torch.long)
        labels = input_ids.clone()
        labels[: len(prompts[i])] = IGNORE_INDEX
        encoded[i] = {"input_ids": input_ids, "labels": labels}
    return encoded


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encodings: `input_ids` with `pad_id`, `labels` with -100, and an attention
    mask of ones over each sequence's real length."""
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item["input_ids"])
        input_ids[row, :length] = item["input_ids"]
        labels[row, :length] = item["labels"]
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
