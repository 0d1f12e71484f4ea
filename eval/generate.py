"""Greedy generation for many prompts at once: length-sorted, left-padded batches that adapt to memory.

    from eval.generate import generate_batched
    generate_batched(model, tokenizer, ["### Instruction:\\nSay hi\\n\\n### Response:"], max_new_tokens=16)

The reference (`evaluations.py`) generates one prompt at a time with no attention mask. Batching gives
the same greedy tokens as long as the padding is invisible to the model: pads go on the left (so every
row's new tokens start at the same column), the attention mask hides them, and `greedy` counts each row's
position ids from its first real token, so each row sees positions 0..len-1 as it would alone (checked by
tests/test_eval_generate.py; padded matrix shapes may still flip a near-tie argmax in rare cases).
`greedy` is a KV-cached loop of its own rather than `generate`: rows that end leave the batch at once.
"""

from __future__ import annotations

from functools import partial

import torch
from accelerate.utils import find_executable_batch_size
from tqdm.auto import tqdm
from transformers.cache_utils import Cache, DynamicLayer

CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 64
CACHE_SHARE = 0.25  # a batch's KV cache (prompts + new tokens) holds at most this share of the weights' bytes
TOKENS_PER_ROW = 256  # without a readable KV shape: a batch holds batch_size * TOKENS_PER_ROW tokens


def generate_batched(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of `prompts` (new tokens only, special tokens removed), in input order.

    A batch holds at most `batch_size` prompts (default 32 on CPU, 64 on an accelerator) and
    `max_tokens` cache positions, rows x (longest prompt + `max_new_tokens`); the default keeps its KV
    cache within `CACHE_SHARE` of the weights' bytes, so eval needs little memory beyond training's.
    Both limits are halved after an out-of-memory error, keeping the prompts already done.
    The tokenizer needs a pad token (`kit.models.load_tokenizer` sets one).
    """
    if not prompts:
        return []
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    outputs: list[str | None] = [None] * len(prompts)
    size = batch_size or (CPU_BATCH_SIZE if model.device.type == "cpu" else GPU_BATCH_SIZE)
    tokens = max_tokens or cache_token_budget(model) or size * TOKENS_PER_ROW
    longest = max(lengths) + max_new_tokens

    def halve() -> int:
        nonlocal size, tokens
        size, tokens = size // 2, max(tokens // 2, longest)
        return size

    @find_executable_batch_size(starting_batch_size=size, reduce_batch_size_fn=halve)
    @torch.inference_mode()
    def run(current: int) -> None:
        todo = [i for i, text in enumerate(outputs) if text is None]
        for rows in plan_batches(lengths, todo, current, tokens, max_new_tokens):
            texts = _generate(model, tokenizer, [prompts[i] for i in rows], max_new_tokens)
            for i, text in zip(rows, texts, strict=True):
                outputs[i] = text
            bar.update(len(rows))

    with tqdm(total=len(prompts), desc="generate", unit="ex", disable=not progress) as bar:
        run()
    return outputs


def cache_token_budget(model, share: float = CACHE_SHARE) -> int | None:
    """Cache positions whose keys and values fill `share` of the weights' bytes (None: shape unknown)."""
    config = getattr(model, "config", None)
    layers, heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_attention_heads", None)
    if not layers or not heads:
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    param = next(model.parameters())
    per_position = 2 * layers * kv_heads * head_dim * param.element_size()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(share * weights / per_position)


def plan_batches(
    lengths: list[int], indices: list[int], batch_size: int, max_tokens: int, new_tokens: int = 0
) -> list[list[int]]:
    """`indices` longest prompt first, cut into batches of at most `batch_size` prompts and `max_tokens`
    cache positions, rows x (longest prompt + `new_tokens`) (a longer prompt alone makes a batch).

    Longest first puts similar lengths together (little padding) and shows an out-of-memory error at once.
    """
    batches: list[list[int]] = []
    for i in sorted(indices, key=lambda i: -lengths[i]):
        last = batches[-1] if batches else []
        if (
            last
            and len(last) < batch_size
            and (len(last) + 1) * (lengths[last[0]] + new_tokens) <= max_tokens
        ):
            last.append(i)
        else:
            batches.append([i])
    return batches


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """One left-padded batch through `greedy`; the decoded new tokens of each row."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    eos = _eos_ids(model, tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if is_prompt_learning(model):  # the base model decodes after the adapter's virtual tokens
        prefix = model.get_prompt(batch_size=ids.shape[0])
        tokens = greedy(model.get_base_model(), ids, mask, max_new_tokens, eos, prefix_embeds=prefix)
    else:
        tokens = greedy(model, ids, mask, max_new_tokens, eos)
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)


def is_prompt_learning(model) -> bool:
    """True for a peft model whose adapter is prompt learning (prompt tuning, P-tuning)."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def _eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a generation: the model's generation config's, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return [eos] if isinstance(eos, int) else list(eos)


@torch.inference_mode()
def greedy(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_ids: list[int],
    prefix_embeds: torch.Tensor | None = None,
) -> list[list[int]]:
    """Greedy new tokens of each row of a left-padded batch (an EOS token ends its row and is kept).

    1) prefill: one forward over the prompts, the LM head on the last position only; 2) then one token
    per step for the rows still running: a row that emits EOS leaves the batch and its cache rows are
    dropped, so the batch shrinks instead of computing pads until its longest row ends. Position ids
    count each row's real tokens (0 at its first), so a row sees what it would see alone.

    `prefix_embeds` ([rows, n, hidden]: a prompt-learning adapter's virtual tokens) go before every row's
    (left-padded) prompt, attended, as peft's own forward places them. peft's `generate` loses them on
    cached steps with this transformers (greedy output unlike greedy decoding through peft's forward:
    FedPrompt/FedPTuning scored Rouge-L 0), so the kit prefills the base model with them itself.
    """
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    out: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    if max_new_tokens < 1:
        return out
    eos = torch.tensor(eos_ids, device=input_ids.device)
    cache = Cache(layer_class_to_replicate=partial(RoomyLayer, max_new_tokens))
    prefill = {"input_ids": input_ids}
    if prefix_embeds is not None:
        embeds = model.get_input_embeddings()(input_ids)
        prefill = {"inputs_embeds": torch.cat([prefix_embeds.to(embeds.dtype), embeds], dim=1)}
        ones = attention_mask.new_ones(input_ids.shape[0], prefix_embeds.shape[1])
        attention_mask = torch.cat([ones, attention_mask], dim=1)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        **prefill,
        attention_mask=attention_mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(-1)
        for row, tok in zip(rows.tolist(), token.tolist(), strict=True):
            out[row].append(tok)
        running = ~torch.isin(token, eos)
        if step == max_new_tokens - 1 or not running.any():
            break
        if not running.all():  # 2) finished rows leave the batch and the cache
            keep = running.nonzero().squeeze(1)
            rows, token, attention_mask, positions = (
                rows[keep],
                token[keep],
                attention_mask[keep],
                positions[keep],
            )
            cache.batch_select_indices(keep)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).logits
    return out


class RoomyLayer(DynamicLayer):
    """A layer's KV cache with room for `room` more positions after the prompt's.

    Hugging Face's `DynamicLayer` concatenates every step, copying the whole cache (for a batch of long
    prompts, more bytes per step than the weights); this one writes each step's keys into the room left
    for them. `keys`/`values` are views of the filled part, so the model sees the same tensors' values.
    """

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room, self.length = room, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            b, h, n, d = key_states.shape
            self.key_room = key_states.new_empty(b, h, n + self.room, d)
            self.value_room = value_states.new_empty(b, h, n + self.room, value_states.shape[-1])
        n = key_states.shape[-2]
        if self.length + n > self.key_room.shape[-2]:
            raise RuntimeError(
                f"KV cache room exceeded: {self.length + n} > {self.key_room.shape[-2]} positions"
            )
        self.key_room[:, :, self.length : self.length + n] = key_states
        self.value_room[:, :, self.length : self.length + n] = value_states
        self.length += n
        self.keys, self.values = self.key_room[:, :, : self.length], self.value_room[:, :, : self.length]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_room, self.value_room = self.key_room[indices], self.value_room[indices]
        self.keys, self.values = self.key_room[:, :, : self.length], self.value_room[:, :, : self.length]
