"""Batched greedy generation (eval/generate.py) vs the reference's one-prompt-at-a-time loop.

    python benchmarks/eval_batched.py                             # 32 prompts, 64 new tokens
    python benchmarks/eval_batched.py --n 8 --max-new-tokens 16   # a quick look
    OMP_NUM_THREADS=1 python benchmarks/eval_batched.py           # on a CPU shared with other jobs

Both run in one process on the real SmolLM2-135M, greedy, the same prompts (half NI test tasks, half Dolly
held-out) and the same `max_new_tokens`. The loop mirrors the reference (`evaluations.py`): `generate` on one
prompt's ids with no attention mask. Prints ONE JSON line: seconds of each, examples/s, the speedup, the
fraction of prompts whose two outputs are identical, and `speedup_bound`: the loop's time over its time
for a single new token (`prefill_s`). Processing the prompts costs the same batched or not, so no batching
can beat that bound. On a CPU busy with other processes, two threads per process oversubscribe the cores
and slow both sides (batched more), so the JSON reports the thread count and the load average.
Data root: --data-root, else $FEDKSEED_DATA_ROOT, else ../shared/data next to the repo.

Measured on the 2-core CPU (2 threads, load ~1.5; outputs identical in every run): speedup 1.65 at 64 new
tokens (98 s vs 162 s, bound 5.7), 1.52 at 128 (165 s vs 251 s, bound 8.1). CPU decoding gains little:
a batch step costs ~2.4 single steps, and a batch runs until its longest output ends, so rows that
stopped early (half of all row-steps here) still cost compute.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from eval.generate import generate_batched
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
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="default: generate_batched's")
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_ROOT))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    examples = build_suite("ni", args.data_root, limit=args.n // 2)
    examples += build_suite("dolly", args.data_root, limit=args.n - len(examples))
    prompts = [ex.prompt for ex in examples]
    model, tokenizer = load_model("smollm2-135m", device=args.device), load_tokenizer("smollm2-135m")
    one_at_a_time(model, tokenizer, prompts[:1], 2)  # warm-up: lazy init, kernel selection
    start = time.perf_counter()
    one_at_a_time(model, tokenizer, prompts, 1)  # the prompts' forward passes: the same work batched or not
    prefill_s = time.perf_counter() - start

    new_tokens = args.max_new_tokens
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    batched = generate_batched(
        model, tokenizer, prompts, max_new_tokens=new_tokens, batch_size=args.batch_size, progress=False
    )
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    looped_ids = one_at_a_time(model, tokenizer, prompts, new_tokens)
    looped_s = time.perf_counter() - start
    looped = [tokenizer.decode(ids, skip_special_tokens=True) for ids in looped_ids]

    result = {
        "n": len(prompts),
        "max_new_tokens": new_tokens,
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "batched_s": round(batched_s, 2),
        "batch1_s": round(looped_s, 2),
        "batched_ex_per_s": round(len(prompts) / batched_s, 3),
        "batch1_ex_per_s": round(len(prompts) / looped_s, 3),
        "speedup": round(looped_s / batched_s, 2),
        "prefill_s": round(prefill_s, 2),
        "speedup_bound": round(looped_s / prefill_s, 2),
        "new_tokens_mean": round(sum(map(len, looped_ids)) / len(prompts), 1),
        "identical": sum(a == b for a, b in zip(batched, looped, strict=True)) / len(prompts),
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
