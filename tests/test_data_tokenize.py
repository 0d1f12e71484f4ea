"""Tokenisation with response-only labels, the appended EOS, truncation and right padding."""

from __future__ import annotations

import pytest
import torch

from kit.data.examples import Example
from kit.data.tokenize import IGNORE_INDEX, collate, encode_all, encode_each, encode_example
from kit.models import load_tokenizer

EX = Example(prompt="### Instruction:\nName a colour.\n\n### Response:", response=" Blue.", task="t")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def test_response_only_labels(tokenizer):
    encoded = encode_example(tokenizer, EX, max_length=256)
    n_prompt = len(ids(tokenizer, EX.prompt))
    assert encoded["input_ids"].tolist() == ids(tokenizer, EX.prompt + EX.response) + [tokenizer.eos_token_id]
    assert (encoded["labels"][:n_prompt] == IGNORE_INDEX).all()
    assert torch.equal(encoded["labels"][n_prompt:], encoded["input_ids"][n_prompt:])


def test_final_eos_kept_when_pad_equals_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2
    short = encode_example(tokenizer, EX, max_length=256)
    longer = encode_example(tokenizer, Example(EX.prompt, " Blue, like the sky.", "t"), max_length=256)
    batch = collate([short, longer], pad_id=tokenizer.pad_token_id)
    last, width = len(short["input_ids"]) - 1, batch["input_ids"].shape[1]
    assert batch["input_ids"][0, last] == tokenizer.eos_token_id
    assert batch["labels"][0, last] == tokenizer.eos_token_id
    assert batch["attention_mask"][0].tolist() == [1] * (last + 1) + [0] * (width - last - 1)
    assert (batch["labels"][0, last + 1 :] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, last + 1 :] == tokenizer.pad_token_id).all()
    assert batch["attention_mask"][1].all()


def test_long_response_truncated_keeping_prompt(tokenizer):
    n_prompt = len(ids(tokenizer, EX.prompt))
    encoded = encode_example(tokenizer, Example(EX.prompt, " blue" * 200, "t"), max_length=n_prompt + 3)
    assert len(encoded["input_ids"]) == n_prompt + 3
    assert encoded["input_ids"][-1] != tokenizer.eos_token_id  # truncated at the response end
    assert (encoded["labels"] != IGNORE_INDEX).sum() == 3


def test_overlong_prompt_dropped_and_counted(tokenizer):
    n_prompt = len(ids(tokenizer, EX.prompt))
    assert encode_example(tokenizer, EX, max_length=n_prompt) is None
    assert encode_example(tokenizer, EX, max_length=n_prompt + 1)["labels"].tolist()[-1] != IGNORE_INDEX
    long_prompt = Example(EX.prompt * 20, EX.response, "t")
    encoded, dropped = encode_all(tokenizer, [EX, long_prompt, EX], max_length=n_prompt + 8)
    assert dropped == 1 and len(encoded) == 2


def test_overlong_prompt_kept_with_every_label_ignored_as_the_reference(tokenizer):
    n_prompt = len(ids(tokenizer, EX.prompt))
    kept = encode_each(tokenizer, [EX], max_length=n_prompt, keep_overlong=True)[0]
    # the reference truncates prompt + response to max_length and masks len(prompt) positions: all of them
    full = ids(tokenizer, EX.prompt + EX.response)
    assert kept["input_ids"].tolist() == full[:n_prompt]
    assert (kept["labels"] == IGNORE_INDEX).all()
    # an example that fits is encoded the same whatever the policy
    fits = encode_each(tokenizer, [EX], max_length=n_prompt + 8, keep_overlong=True)[0]
    assert fits["labels"].tolist() == encode_example(tokenizer, EX, n_prompt + 8)["labels"].tolist()


class BosTokenizer:
    """Character-level stand-in for a tokenizer that prepends a BOS id (Llama-style)."""

    eos_token_id = 2

    def __call__(self, texts: list[str], **_) -> dict:
        return {"input_ids": [[1] + [ord(c) for c in text] for text in texts]}


def test_bos_is_masked_with_the_prompt():
    encoded = encode_example(BosTokenizer(), Example("ab", "c", "t"), max_length=16)
    assert encoded["input_ids"].tolist() == [1, ord("a"), ord("b"), ord("c"), 2]
    assert encoded["labels"].tolist() == [IGNORE_INDEX] * 3 + [ord("c"), 2]
