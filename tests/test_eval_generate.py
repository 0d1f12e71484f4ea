"""Batched greedy generation on the real SmolLM2 gives what one-prompt-at-a-time generation gives; batches
are planned longest first within the row and padded-token limits."""

from __future__ import annotations

import pytest
import torch
from transformers import BatchEncoding

from eval.generate import cache_token_budget, generate_batched, greedy, plan_batches
from kit.data.prompts import dolly_prompt
from kit.models import load_model, load_tokenizer

PASSAGE = (
    "The Amazon rainforest covers much of the Amazon basin of South America. The basin spans about seven "
    "million square kilometres, of which the rainforest covers five and a half million. The region includes "
    "territory belonging to nine nations, and most of the forest lies within Brazil, followed by Peru and "
    "Colombia. It represents over half of the planet's remaining rainforests and is the most biodiverse "
    "tract of tropical rainforest in the world, with an estimated 390 billion individual trees."
)
# Not sorted by length, so the outputs must be put back in input order.
PROMPTS = [
    dolly_prompt("Summarize this passage in one sentence.", PASSAGE),
    dolly_prompt("Name a primary color.", ""),
    dolly_prompt("Which country holds most of the forest?", PASSAGE[:200]),
    "Hello",
    dolly_prompt("List three uses of rain forests, then explain which matters most and why.", PASSAGE * 2),
    dolly_prompt("Translate 'good morning' into French.", ""),
]
MAX_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return load_model("smollm2-135m"), load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def one_at_a_time(model_and_tokenizer) -> list[str]:
    """Generation as the reference does it: one prompt, no padding, no attention mask."""
    model, tokenizer = model_and_tokenizer
    outputs = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            tokens = model.generate(
                ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            outputs.append(tokenizer.decode(tokens[0, ids.shape[1] :], skip_special_tokens=True))
    return outputs


@pytest.mark.slow
def test_prompts_have_clearly_different_lengths(model_and_tokenizer) -> None:
    lengths = [len(ids) for ids in model_and_tokenizer[1](PROMPTS)["input_ids"]]
    assert len(set(lengths)) == len(PROMPTS)
    assert max(lengths) > 50 * min(lengths)


@pytest.mark.slow
def test_batched_generation_matches_one_at_a_time(model_and_tokenizer, one_at_a_time) -> None:
    model, tokenizer = model_and_tokenizer
    # two left-padded batches of three (the 1-token prompt padded to ~40 tokens), put back in input order
    batched = generate_batched(model, tokenizer, PROMPTS, max_new_tokens=MAX_NEW_TOKENS, batch_size=3)
    assert batched == one_at_a_time
    assert any(batched)  # the comparison is not vacuous


def test_no_prompts_no_outputs() -> None:
    assert generate_batched(None, None, []) == []


def test_plan_batches_longest_first_within_row_and_token_limits() -> None:
    lengths = [10, 600, 20, 300, 30, 5, 250]
    batches = plan_batches(lengths, [0, 1, 2, 3, 4, 5, 6], batch_size=3, max_tokens=768)
    assert batches == [[1], [3, 6], [4, 2, 0], [5]]
    assert plan_batches(lengths, [0, 2, 5], batch_size=3, max_tokens=768) == [[2, 0, 5]]  # only these
    # the new tokens count: rows x (longest prompt + 100) <= 768
    assert plan_batches(lengths, [0, 2, 4, 5], 4, 768, new_tokens=100) == [[4, 2, 0, 5]]
    assert plan_batches(lengths, [3, 6, 4], 4, 768, new_tokens=100) == [[3], [6, 4]]


def test_plan_batches_gives_a_too_long_prompt_its_own_batch() -> None:
    assert plan_batches([5000, 10], [0, 1], batch_size=2, max_tokens=512) == [[0], [1]]


def test_cache_token_budget_is_the_share_of_the_weights_bytes(tiny_model) -> None:
    # tiny Llama: 2 layers x 2 KV heads x head dim 8 x (keys + values) x 4 bytes = 256 bytes per position
    weights = sum(p.numel() * 4 for p in tiny_model.parameters())
    assert cache_token_budget(tiny_model, share=0.5) == int(0.5 * weights / 256)


def _alone(model, ids: list[int], max_new_tokens: int, eos: int | None) -> list[int]:
    """Hugging Face greedy `generate` on one prompt, no padding, no attention mask: the new tokens."""
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0
    )
    new = out[0, len(ids) :].tolist()
    return new[: new.index(eos) + 1] if eos in new else new


def test_greedy_drops_finished_rows_and_matches_each_prompt_alone(tiny_model) -> None:
    prompts = [[5, 9, 14, 3, 77, 21, 8], [40, 41], [100, 7, 7, 12], [3, 60, 90, 91, 92]]
    free = [_alone(tiny_model, p, 12, None) for p in prompts]
    eos = free[1][2]  # a token row 1 emits third: row 1 ends early, the batch goes on without it
    expected = [_alone(tiny_model, p, 12, eos) for p in prompts]
    assert len({len(e) for e in expected}) > 1  # rows end at different steps
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    rows_per_forward = []
    hook = tiny_model.register_forward_pre_hook(
        lambda _m, _a, kw: rows_per_forward.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = greedy(tiny_model, ids, mask, 12, [eos])
    finally:
        hook.remove()
    assert got == expected
    assert rows_per_forward[0] == 4 and rows_per_forward[-1] == sum(len(e) == 12 for e in expected)
    assert rows_per_forward == sorted(rows_per_forward, reverse=True)
    assert len(rows_per_forward) == max(map(len, expected))  # prefill + one forward per further token


def test_greedy_stops_when_every_row_has_ended(tiny_model) -> None:
    prompt = [5, 9, 14]
    first = _alone(tiny_model, prompt, 1, None)[0]
    assert greedy(tiny_model, torch.tensor([prompt]), torch.ones(1, 3, dtype=torch.long), 50, [first]) == [
        [first]
    ]


@pytest.mark.parametrize("adapter", ["prompt_tuning", "p_tuning"])
def test_prompt_learning_generation_matches_greedy_through_peft_forward(tiny_model, adapter) -> None:
    """FedPrompt/FedPTuning models generate what greedy decoding through peft's own (uncached) forward
    gives, prompts of different lengths batched with left padding."""
    from peft import PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model

    from eval.generate import _generate

    if adapter == "prompt_tuning":
        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5)
    else:
        config = PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5, encoder_hidden_size=16
        )
    torch.manual_seed(3)
    model = get_peft_model(tiny_model, config).eval()

    class Ids:  # a tokenizer over raw token ids: "3 17 9" <-> [3, 17, 9]
        pad_token_id, eos_token_id = 0, 2

        def __call__(self, texts, return_tensors, padding, padding_side):
            rows = [[int(t) for t in text.split()] for text in texts]
            width = max(map(len, rows))
            ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            return BatchEncoding({"input_ids": ids, "attention_mask": mask})

        def batch_decode(self, tokens, skip_special_tokens):
            return [" ".join(str(int(t)) for t in row) for row in tokens]

    prompts, new = ["5 9 33 71 12 8 40", "7 3"], 6
    model.generation_config.eos_token_id = 127  # a token these rows never emit: all run to `new`
    with torch.inference_mode():
        batched = _generate(model, Ids(), prompts, new)
        expected = []
        for prompt in prompts:
            ids = torch.tensor([[int(t) for t in prompt.split()]])
            for _ in range(new):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
            expected.append(" ".join(str(int(t)) for t in ids[0, -new:]))
    assert batched == expected
