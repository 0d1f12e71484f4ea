"""Batched greedy generation gives what one-prompt-at-a-time generation gives (the real SmolLM2, a tiny
Llama): rows that end leave the batch, new prompts join it, and the batch stays within its row and cache
limits."""

from __future__ import annotations

import pytest
import torch

from eval.generate import RoomyLayer, cache_token_budget, generate_batched, greedy_stream
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
    # at most three rows at once: prompts join as rows end; outputs put back in input order
    batched = generate_batched(model, tokenizer, PROMPTS, max_new_tokens=MAX_NEW_TOKENS, batch_size=3)
    assert batched == one_at_a_time
    assert any(batched)  # the comparison is not vacuous


def test_no_prompts_no_outputs() -> None:
    assert generate_batched(None, None, []) == []


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


def _forwards(model, prompts, max_new_tokens, eos, max_rows, max_tokens):
    """greedy_stream's results by prompt, and (rows, attention mask width, prefill?) of every forward."""
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(
            (*kw["attention_mask"].shape, kw["input_ids"].shape[1] == kw["attention_mask"].shape[1])
        ),
        with_kwargs=True,
    )
    try:
        got = dict(greedy_stream(model, prompts, max_new_tokens, [eos], max_rows, max_tokens))
    finally:
        hook.remove()
    return [got[i] for i in range(len(prompts))], shapes


def test_greedy_drops_finished_rows_and_matches_each_prompt_alone(tiny_model) -> None:
    prompts = [[5, 9, 14, 3, 77, 21, 8], [40, 41], [100, 7, 7, 12], [3, 60, 90, 91, 92]]
    free = [_alone(tiny_model, p, 12, None) for p in prompts]
    eos = free[1][2]  # a token row 1 emits third: row 1 ends early, the batch goes on without it
    expected = [_alone(tiny_model, p, 12, eos) for p in prompts]
    assert len({len(e) for e in expected}) > 1  # rows end at different steps
    got, shapes = _forwards(tiny_model, prompts, 12, eos, max_rows=4, max_tokens=10_000)
    assert got == expected
    assert [(rows, prefill) for rows, _, prefill in shapes[:4]] == [(1, True)] * 4  # each prompt alone
    decoding = [rows for rows, _, prefill in shapes[4:] if not prefill]
    assert len(decoding) == len(shapes) - 4  # no prompt left to join
    assert decoding[0] == 4 and decoding[-1] == sum(len(e) == 12 for e in expected)
    assert decoding == sorted(decoding, reverse=True)  # rows that end leave the batch
    assert len(decoding) == max(map(len, expected)) - 1  # one forward per further token


def test_prompts_join_the_batch_as_rows_end_within_its_limits(tiny_model) -> None:
    """Eight prompts through at most 3 rows and 3 x 30 cache positions: each gets its tokens alone."""
    prompts = [[5, 9, 14, 3, 77, 21, 8, 4, 4, 60], [40, 41], [100, 7, 7, 12], [3, 60, 90, 91, 92]]
    prompts += [[11, 12, 13], [99, 98, 97, 96, 95, 94], [7], [50, 51, 52, 53, 54, 55, 56, 57]]
    eos = _alone(tiny_model, prompts[1], 12, None)[1]
    expected = [_alone(tiny_model, p, 12, eos) for p in prompts]
    assert len({len(e) for e in expected}) > 2
    got, shapes = _forwards(tiny_model, prompts, 12, eos, max_rows=3, max_tokens=3 * 30)
    assert got == expected
    assert max(rows for rows, _, _ in shapes) == 3
    assert all(rows * width <= 3 * 30 for rows, width, _ in shapes)
    prefills = [k for k, (_, _, prefill) in enumerate(shapes) if prefill]
    assert prefills[0] == 0 and len(prefills) > 1 and any(not shapes[k - 1][2] for k in prefills[1:])
    assert len(shapes) < sum(map(len, expected))  # fewer forwards than one prompt at a time


def test_a_prompt_too_long_for_the_budget_runs_alone(tiny_model) -> None:
    prompts = [[5, 9, 14, 3, 77, 21, 8, 4, 4, 60, 61, 62], [40, 41]]
    expected = [_alone(tiny_model, p, 4, None) for p in prompts]
    got, shapes = _forwards(tiny_model, prompts, 4, -1, max_rows=2, max_tokens=8)
    assert got == expected and max(rows for rows, _, _ in shapes) == 1


def test_joined_cache_keeps_each_rows_keys_right_aligned_and_zeros_between() -> None:
    old, new = RoomyLayer(0), RoomyLayer(0)
    old.update(torch.arange(1.0, 7.0).view(1, 1, 6, 1), torch.arange(1.0, 7.0).view(1, 1, 6, 1))
    new.update(torch.tensor([[[[7.0], [8.0]]], [[[9.0], [10.0]]]]), torch.ones(2, 1, 2, 1))
    joined = RoomyLayer.joined([old, new], wide=6, start=1, room=3)  # column 0 is masked for every row
    assert joined.keys[:, 0, :, 0].tolist() == [[2, 3, 4, 5, 6], [0, 0, 0, 7, 8], [0, 0, 0, 9, 10]]
    assert joined.values[:, 0, :, 0].tolist() == [[2, 3, 4, 5, 6], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    assert joined.key_room.shape[-2] == 5 + 3 and joined.get_seq_length() == 5
    joined.update(torch.full((3, 1, 1, 1), 11.0), torch.full((3, 1, 1, 1), 11.0))  # the next step's column
    assert joined.keys[:, 0, -1, 0].tolist() == [11, 11, 11] and joined.get_seq_length() == 6


def test_greedy_stops_when_every_row_has_ended(tiny_model) -> None:
    prompt = [5, 9, 14]
    first = _alone(tiny_model, prompt, 1, None)[0]
    assert list(greedy_stream(tiny_model, [prompt], 50, [first], 1, 100)) == [(0, [first])]


@pytest.mark.parametrize("adapter", ["prompt_tuning", "p_tuning"])
def test_prompt_learning_generation_matches_greedy_through_peft_forward(tiny_model, adapter) -> None:
    """FedPrompt/FedPTuning models generate what greedy decoding through peft's own (uncached) forward
    gives, prompts of different lengths batched with left padding."""
    from peft import PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model

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

        def __call__(self, texts):
            return {"input_ids": [[int(t) for t in text.split()] for text in texts]}

        def decode(self, tokens, skip_special_tokens):
            return " ".join(str(int(t)) for t in tokens)

    prompts, new = ["5 9 33 71 12 8 40", "7 3"], 6
    model.generation_config.eos_token_id = 127  # a token these rows never emit: all run to `new`
    with torch.inference_mode():
        batched = generate_batched(model, Ids(), prompts, max_new_tokens=new, progress=False)
        expected = []
        for prompt in prompts:
            ids = torch.tensor([[int(t) for t in prompt.split()]])
            for _ in range(new):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
            expected.append(" ".join(str(int(t)) for t in ids[0, -new:]))
    assert batched == expected
