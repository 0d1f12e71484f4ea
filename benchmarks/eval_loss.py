"""The eval loss one example at a time (kit/lm_head.py) vs the batched logits it replaced: time and values.

    python benchmarks/eval_loss.py [--batch 8] [--repeats 3] [--quick]

On the real SmolLM2-135M (float32), a batch of the first `--batch` Dolly records (file order, 256-token
window, right-padded by the kit's collate), interleaved: `per_example` is `FedKSeedModule.example_losses`
(the LM head and cross-entropy one example at a time); `batched` is the formula it replaced, the response
window's logits of the whole batch at once ([batch x positions x vocab] float32) and a batched masked
cross-entropy. Prints one JSON line: median seconds of each, their paired ratio, the largest absolute
difference of the per-example losses, and the logits bytes the batched form holds at once.
"""

from __future__ import annotations

import torch
from common import (
    base_parser,
    bench_model,
    data_root,
    emit,
    interleaved,
    machine,
    median,
    paired_ratio,
    rounded,
)


def eval_batch(size: int, seq_len: int) -> dict:
    """The first `size` Dolly records that fit `seq_len` tokens, collated as the eval loader does."""
    from kit.data.dolly import dolly_example, load_dolly
    from kit.data.tokenize import collate, encode_each
    from kit.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    items = encode_each(tokenizer, [dolly_example(r) for r in load_dolly(data_root())[:64]], seq_len)
    return collate([i for i in items if i is not None][:size], tokenizer.pad_token_id)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--batch", type=int, default=8, help="eval batch size (the loop's default 8)")
    args = parser.parse_args()
    from kit.module import FedKSeedModule

    module = FedKSeedModule()
    module.net = bench_model(args.quick)
    batch = eval_batch(args.batch, 64 if args.quick else 256)

    @torch.no_grad()
    def batched() -> torch.Tensor:
        logits, labels = module.response_logits(batch)
        tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        mask = (labels != -100).float()
        return (tok * mask).sum(1) / mask.sum(1)

    cases = {"per_example": lambda: module.example_losses(batch), "batched": batched}
    times = interleaved(cases, 1 if args.quick else args.repeats)
    logits, _ = module.response_logits(batch)
    emit(
        bench="eval_loss",
        machine=machine(),
        threads=torch.get_num_threads(),
        batch_shape=list(batch["input_ids"].shape),
        per_example_s=rounded(median(times["per_example"])),
        batched_s=rounded(median(times["batched"])),
        ratio_per_example_over_batched=rounded(paired_ratio(times["per_example"], times["batched"]), 3),
        max_abs_diff=float((cases["per_example"]() - batched()).abs().max()),
        batched_logits_bytes=logits.numel() * logits.element_size(),
    )


if __name__ == "__main__":
    main()
