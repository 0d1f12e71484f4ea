"""Batched greedy generation (eval/generate.py) vs the reference's one-prompt-at-a-time loop, in new tokens/s.

    python benchmarks/eval_batched.py                             # 32 prompts, 128 new tokens
    python benchmarks/eval_batched.py --n 114 --cache-share 0.25 0.5 1   # the issue's 114 prompts, 3 budgets
    python benchmarks/eval_batched.py --n 8 --max-new-tokens 16   # a quick look
    python benchmarks/eval_batched.py --n 114 --decode-rows 1 4 8 16 32   # and what more rows would give

Both run in one process on the real SmolLM2-135M, greedy, the same prompts (half NI test tasks, half Dolly
held-out) and the same `max_new_tokens`. The loop mirrors the reference (`evaluations.py`): `generate` on one
prompt's ids with no attention mask. Prints ONE JSON line: the seconds and new tokens/s of each (the new
tokens are the loop's; `identical` is the fraction of prompts whose two decoded outputs are equal, so at 1.0
both made the same tokens), their ratio `speedup`, and the bound set by the prompts' prefill: the loop's time
over `prefill_batched_s`, the batched path's own time for a single new token (its prompts' forward passes),
which no decoding speed-up can go below (`speedup_bound`). With several `--cache-share` values (the KV cache
budget as a share of the weights' bytes, `eval.generate.CACHE_SHARE` by default) the batched side runs once
per value, one line each, against the same timed loop; `peak_rise_bytes` is the process's peak RSS rise
during that batched run over the peak before it (runs with larger budgets come later, so each line's rise
is over the earlier runs' peak: read it as "this budget needed that much more"). The JSON also reports the
thread count and the load average before and after: on a CPU shared with other processes the timings move.
`--decode-rows R..` adds a line with one decode step's time at R rows over the prompts' mean length plus
half the new tokens, and the speedup the loop's time allows if every step had R rows
(`speedup_if_every_step_had_rows`: the loop's seconds over the prefill's plus the new tokens' at that cost).
Data root: --data-root, else $FEDKSEED_DATA_ROOT, else ../shared/data next to the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from functools import partial
from pathlib import Path

import torch
from transformers.cache_utils import Cache

from eval.generate import CACHE_SHARE, RoomyLayer, cache_token_budget, generate_batched
from eval.suites import build_suite
from kit.models import load_model, load_tokenizer
from kit.paths import DATA_ROOT_ENV

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """The reference's loop: batch size 1, input ids only; the new token ids of each prompt."""
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
            tokens = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            outputs.append(tokens[0, ids.shape[1] :].tolist())
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="prompts (half NI, half Dolly)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None, help="default: generate_batched's")
    parser.add_argument(
        "--cache-share", type=float, nargs="+", default=[CACHE_SHARE], help="KV cache budgets to time"
    )
    parser.add_argument(
        "--decode-rows", type=int, nargs="*", default=[], help="also time one decode step at these row counts"
    )
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_ROOT))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    examples = build_suite("ni", args.data_root, limit=args.n // 2)
    examples += build_suite("dolly", args.data_root, limit=args.n - len(examples))
    prompts = [ex.prompt for ex in examples]
    model, tokenizer = load_model("smollm2-135m", device=args.device), load_tokenizer("smollm2-135m")
    one_at_a_time(model, tokenizer, prompts[:1], 2)  # warm-up: lazy init, kernel selection
    generate_batched(model, tokenizer, prompts[:2], max_new_tokens=2, progress=False)

    new_tokens = args.max_new_tokens

    def options(max_new_tokens: int, share: float) -> dict:
        return {
            "max_new_tokens": max_new_tokens,
            "batch_size": args.batch_size,
            "max_tokens": cache_token_budget(model, share),
            "progress": False,
        }

    load_before = os.getloadavg()[0]
    looped_s, looped_ids = _timed(lambda: one_at_a_time(model, tokenizer, prompts, new_tokens))
    looped = [tokenizer.decode(ids, skip_special_tokens=True) for ids in looped_ids]
    made = sum(map(len, looped_ids))
    prompt_tokens = sum(len(ids) for ids in tokenizer(prompts)["input_ids"])
    prefill_s, _ = _timed(lambda: generate_batched(model, tokenizer, prompts, **options(1, CACHE_SHARE)))
    for share in args.cache_share:
        peak_before = _peak_rss()
        batched_s, batched = _timed(
            lambda share=share: generate_batched(model, tokenizer, prompts, **options(new_tokens, share))
        )
        result = {
            "n": len(prompts),
            "max_new_tokens": new_tokens,
            "new_tokens": made,
            "prompt_tokens": prompt_tokens,
            "device": str(model.device),
            "threads": torch.get_num_threads(),
            "cache_share": share,
            "cache_positions": cache_token_budget(model, share),
            "batched_s": round(batched_s, 2),
            "batch1_s": round(looped_s, 2),
            "batched_tok_per_s": round(made / batched_s, 2),
            "batch1_tok_per_s": round(made / looped_s, 2),
            "speedup": round(looped_s / batched_s, 2),
            "prefill_batched_s": round(prefill_s, 2),
            "speedup_bound": round(looped_s / prefill_s, 2),
            "identical": sum(a == b for a, b in zip(batched, looped, strict=True)) / len(prompts),
            "peak_rise_bytes": _peak_rss() - peak_before,
            "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
        print(json.dumps(result), flush=True)
    if args.decode_rows:
        context = round(prompt_tokens / len(prompts) + new_tokens / 2)
        step_ms = {rows: decode_step_ms(model, rows, context) for rows in args.decode_rows}
        bound = {rows: looped_s / (prefill_s + made / rows * ms / 1000) for rows, ms in step_ms.items()}
        print(
            json.dumps(
                {
                    "context": context,
                    "decode_ms_per_step": step_ms,
                    "decode_ms_per_token": {r: round(ms / r, 2) for r, ms in step_ms.items()},
                    "speedup_if_every_step_had_rows": {r: round(b, 2) for r, b in bound.items()},
                }
            ),
            flush=True,
        )


@torch.inference_mode()
def decode_step_ms(model, rows: int, context: int, steps: int = 12) -> float:
    """Median milliseconds of one greedy decode step of `rows` rows over `context` cached positions (random
    token ids; the cost does not depend on their values), on generate.py's in-place cache."""
    cache = Cache(layer_class_to_replicate=partial(RoomyLayer, steps))
    ids = torch.randint(0, 1000, (rows, context), device=model.device)
    mask = torch.ones_like(ids)
    model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
    token, times = ids[:, -1:], []
    for step in range(steps):
        mask = torch.cat([mask, mask[:, :1]], dim=1)
        inputs = {"input_ids": token, "attention_mask": mask, "cache": cache, "use_cache": True}
        inputs["position_ids"] = torch.full((rows, 1), context + step, device=model.device)
        seconds, _ = _timed(partial(model, **inputs))
        times.append(seconds)
    return round(sorted(times)[steps // 2] * 1000, 1)


def _peak_rss() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed(fn):
    """(seconds, result) of one call of `fn`."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


if __name__ == "__main__":
    main()
