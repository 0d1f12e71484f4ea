"""Greedy generation for many prompts at once: continuous batching over a KV cache that stays within a budget.

    from eval.generate import generate_batched
    generate_batched(model, tokenizer, ["### Instruction:\\nSay hi\\n\\n### Response:"], max_new_tokens=16)

The reference (`evaluations.py`) generates one prompt at a time with no attention mask. Here the prompts,
longest first, stream through one batch of rows (`greedy_stream`): a row that ends leaves the batch at once,
and once a quarter of the batch's room is free the next prompts are prefilled and join it, so decoding runs
on a full batch until the prompts run out. Rows share the cache's columns, right-aligned: a row's prompt is
preceded by masked columns, and its position ids count its own tokens from 0, so every row sees what it
would see alone and gets the same greedy tokens (tests/test_eval_generate.py; padded matrix shapes may
still flip a near-tie argmax in rare cases).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from accelerate.utils import find_executable_batch_size
from tqdm.auto import tqdm
from transformers.cache_utils import Cache, DynamicLayer

from kit.heap import release_free_memory

CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 64
# the batch's KV cache (prompts + new tokens) holds at most this share of the weights' bytes
CACHE_SHARE = 0.25
TOKENS_PER_ROW = 256  # without a readable KV shape: a batch holds batch_size * TOKENS_PER_ROW tokens
REFILL_SHARE = 0.25  # new prompts join the batch once they would make up this share of its rows

Prefix = Callable[[list[int]], torch.Tensor]  # prompt indices -> their virtual tokens [rows, n, hidden]


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

    At most `batch_size` rows decode together (default 32 on CPU, 64 on an accelerator), holding at most
    `max_tokens` cache positions, rows x (widest prompt + `max_new_tokens`); the default keeps the KV cache
    within `CACHE_SHARE` of the weights' bytes, so eval needs little memory beyond training's. Both limits
    are halved after an out-of-memory error, keeping the prompts already done.
    """
    if not prompts:
        return []
    release_free_memory()  # the KV cache then grows from the live memory, not on top of freed pages
    encoded = tokenizer(prompts)["input_ids"]
    outputs: list[str | None] = [None] * len(prompts)
    size = batch_size or (CPU_BATCH_SIZE if model.device.type == "cpu" else GPU_BATCH_SIZE)
    tokens = max_tokens or cache_token_budget(model) or size * TOKENS_PER_ROW
    longest = max(map(len, encoded)) + max_new_tokens
    eos = _eos_ids(model, tokenizer)
    decoder, prefix = model, None
    if is_prompt_learning(model):  # the base model decodes after the adapter's virtual tokens
        decoder = model.get_base_model()
        prefix = lambda rows: model.get_prompt(batch_size=len(rows))  # noqa: E731 (same for every row)

    def halve() -> int:
        nonlocal size, tokens
        size, tokens = size // 2, max(tokens // 2, longest)
        return size

    @find_executable_batch_size(starting_batch_size=size, reduce_batch_size_fn=halve)
    @torch.inference_mode()
    def run(rows: int) -> None:
        todo = sorted((i for i, text in enumerate(outputs) if text is None), key=lambda i: -len(encoded[i]))
        stream = greedy_stream(
            decoder, [encoded[i] for i in todo], max_new_tokens, eos, rows, tokens, prefix=prefix
        )
        for k, new in stream:
            outputs[todo[k]] = tokenizer.decode(new, skip_special_tokens=True)
            bar.update(1)

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


def is_prompt_learning(model) -> bool:
    """True for a peft model whose adapter is prompt learning (prompt tuning, P-tuning)."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def _eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a generation: the model's generation config's, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return [eos] if isinstance(eos, int) else list(eos)


@dataclass
class Rows:
    """The rows decoding together: prompt index, new tokens, cache, attention mask [rows, width], next token
    and its position id of each row."""

    index: list[int]
    new: list[list[int]]
    cache: Cache
    mask: torch.Tensor
    token: torch.Tensor
    position: torch.Tensor

    def __len__(self) -> int:
        return len(self.index)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def select(self, keep: list[int]) -> None:
        """Keep only rows `keep` (positions in this batch), cache included."""
        at = torch.tensor(keep, device=self.mask.device)
        self.index, self.new = [self.index[k] for k in keep], [self.new[k] for k in keep]
        self.mask, self.token, self.position = self.mask[at], self.token[at], self.position[at]
        self.cache.batch_select_indices(at)


@torch.inference_mode()
def greedy_stream(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_ids: list[int],
    max_rows: int,
    max_tokens: int,
    *,
    prefix: Prefix | None = None,
) -> Iterator[tuple[int, list[int]]]:
    """(prompt index, greedy new tokens) of every prompt, as each ends (EOS, kept, or `max_new_tokens`).

    Prompts join in the given order while the batch has at most `max_rows` rows and `max_tokens` cache
    positions (a prompt too long for that runs alone); they join once they would be `REFILL_SHARE` of the
    rows, or when the batch is empty. `prefix` gives virtual tokens (a prompt-learning adapter's) to put
    before a prompt, attended, as peft's own forward places them: peft's `generate` loses them on cached
    steps with this transformers, so they are prefilled into the base model's cache here.
    """
    if max_new_tokens < 1:
        yield from ((i, []) for i in range(len(prompts)))
        return
    eos = torch.tensor(eos_ids, device=model.device)
    extra = 0 if prefix is None else prefix([0]).shape[1]  # virtual tokens before every prompt
    lengths = [len(p) + extra for p in prompts]
    pending = deque(range(len(prompts)))
    rows: Rows | None = None
    while pending or rows:
        joining = _admit(lengths, pending, rows, max_rows, max_tokens, max_new_tokens)
        if joining:
            parts = [rows] if rows else []
            for i in joining:
                fresh = _prefill(model, prompts[i], i, prefix)
                yield from _finish(fresh, eos, max_new_tokens)
                parts += [fresh] if fresh else []
            rows = _merge(parts, max_new_tokens) if parts else None
        if not rows:
            rows = None  # release an ended batch's cache before the next prefill
            continue
        rows.mask = torch.cat([rows.mask, rows.mask.new_ones(len(rows), 1)], dim=1)
        logits = model(
            input_ids=rows.token[:, None],
            attention_mask=rows.mask,
            position_ids=rows.position[:, None],
            cache=rows.cache,
            use_cache=True,
        ).logits
        rows.position = rows.position + 1
        _take(rows, logits[:, -1].argmax(-1))
        yield from _finish(rows, eos, max_new_tokens)


def _admit(
    lengths: list[int], pending: deque, rows: Rows | None, max_rows: int, max_tokens: int, max_new_tokens: int
) -> list[int]:
    """The next prompts to join `rows` (taken from `pending`): within both limits, and only when they would
    be `REFILL_SHARE` of the rows, or are the last ones, or the batch is empty."""
    current = len(rows) if rows else 0
    width = rows.width if rows else 0
    joining: list[int] = []
    for i in pending:
        width = max(width, lengths[i])
        n = current + len(joining) + 1
        if n > max_rows or n * (width + max_new_tokens) > max_tokens:
            break
        joining.append(i)
    if not current and not joining and pending:
        joining = [pending[0]]  # too long for the budget: alone
    if current and len(joining) < min(REFILL_SHARE * (current + len(joining)), len(pending)):
        return []
    for _ in joining:
        pending.popleft()
    return joining


def _prefill(model, prompt: list[int], index: int, prefix: Prefix | None) -> Rows:
    """One prompt's forward, alone as the reference runs it (no padding: no attention matrix with masked
    entries to hold), into a cache of its own; its first new token."""
    ids = torch.tensor([prompt], device=model.device)
    inputs = {"input_ids": ids}
    if prefix is not None:
        embeds = model.get_input_embeddings()(ids)
        inputs = {"inputs_embeds": torch.cat([prefix([index]).to(embeds.dtype), embeds], dim=1)}
    width = inputs.get("inputs_embeds", ids).shape[1]
    mask = torch.ones(1, width, dtype=torch.long, device=model.device)
    position = torch.arange(width, device=model.device)[None]
    cache = Cache(layer_class_to_replicate=partial(RoomyLayer, 0))
    out = model(
        **inputs, attention_mask=mask, position_ids=position, cache=cache, use_cache=True, logits_to_keep=1
    )
    fresh = Rows([index], [[]], cache, mask, ids[:, 0], position[:, -1] + 1)
    _take(fresh, out.logits[:, -1].argmax(-1))
    return fresh


def _take(rows: Rows, token: torch.Tensor) -> None:
    """Each row's next greedy token: appended to its new tokens, and the token it feeds next."""
    rows.token = token
    for new, tok in zip(rows.new, token.tolist(), strict=True):
        new.append(tok)


def _finish(rows: Rows, eos: torch.Tensor, max_new_tokens: int) -> Iterator[tuple[int, list[int]]]:
    """Yield the rows that ended (EOS or `max_new_tokens`) and drop them from the batch and the cache."""
    ended = torch.isin(rows.token, eos).tolist()
    ended = [e or len(new) == max_new_tokens for e, new in zip(ended, rows.new, strict=True)]
    if not any(ended):
        return
    for k, done in enumerate(ended):
        if done:
            yield rows.index[k], rows.new[k]
    keep = [k for k, done in enumerate(ended) if not done]
    if keep:
        rows.select(keep)
    else:
        rows.index, rows.new = [], []


def _merge(parts: list[Rows], max_new_tokens: int) -> Rows:
    """One batch of the rows of `parts`: right-aligned on the widest's columns, columns masked for every row
    dropped, room for every row's remaining new tokens; copied layer by layer, each part's layer released
    once copied."""
    wide = max(part.width for part in parts)
    mask = torch.cat([_pad_left(part.mask, wide) for part in parts])
    start = int(mask.any(0).nonzero()[0])  # columns before it are masked for every row
    room = max(max_new_tokens - len(new) for part in parts for new in part.new)
    layers = []
    for i in range(len(parts[0].cache.layers)):
        layers.append(RoomyLayer.joined([part.cache.layers[i] for part in parts], wide, start, room))
        for part in parts:
            part.cache.layers[i] = None
    return Rows(
        [i for part in parts for i in part.index],
        [new for part in parts for new in part.new],
        Cache(layers=layers),
        mask[:, start:],
        torch.cat([part.token for part in parts]),
        torch.cat([part.position for part in parts]),
    )


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros(mask.shape[0], width - mask.shape[1]), mask], dim=1)


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
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys, self.values = self.key_room[:, :, : self.length], self.value_room[:, :, : self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows `indices`: their filled columns are copied into new rooms, whose free columns stay
        unwritten (indexing the whole room would copy, and so touch, every page of it)."""
        self.key_room, self.value_room = (
            self._select(room, indices) for room in (self.key_room, self.value_room)
        )
        self._views()

    def _select(self, room: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        kept = room.new_empty(len(indices), *room.shape[1:])
        kept[:, :, : self.length] = room[indices, :, : self.length]
        return kept

    @classmethod
    def joined(cls, parts: list[RoomyLayer], wide: int, start: int, room: int) -> RoomyLayer:
        """The rows of `parts` in one layer, each right-aligned on `wide` columns, the first `start` dropped,
        with `room` free columns after. The masked columns before a row's own are zeros (a masked column's
        value is still multiplied by its zero attention weight: it must be finite); the room is left
        unwritten, so its memory pages are touched only as the rows fill it."""
        layer = cls(room)
        rooms = []
        for name in ("key_room", "value_room"):
            first_room = getattr(parts[0], name)
            rows = sum(getattr(part, name).shape[0] for part in parts)
            _, heads, _, dim = first_room.shape
            merged = first_room.new_empty(rows, heads, wide - start + room, dim)
            row = 0
            for part in parts:
                source = getattr(part, name)
                first = max(start - (wide - part.length), 0)  # the part's first column kept
                at = wide - part.length + first - start  # and where it goes
                block = slice(row, row + source.shape[0])
                merged[block, :, :at] = 0
                merged[block, :, at : wide - start] = source[:, :, first : part.length]
                row += source.shape[0]
            rooms.append(merged)
        layer.lazy_initialization(rooms[0], rooms[1])
        layer.key_room, layer.value_room = rooms
        layer.length = wide - start
        layer._views()
        return layer
