"""The LM head applied one example at a time, so eval never holds a [batch x positions x vocab] tensor.

    with head_inputs(net) as captured:
        net(input_ids=ids, attention_mask=mask, logits_to_keep=k)
    losses = example_losses(captured.hidden, labels, net.get_output_embeddings())

The eval loss of a batch of 8 x 256 positions on a 49k vocabulary needs 0.4 GB of float32 logits and as
much again inside cross-entropy; training (batch 1) needs an eighth of that. Capturing the head's input
(the last hidden states) and projecting one example at a time keeps eval's transient at training's size,
with the same numbers: each example's logits, token losses and masked mean are computed as in the whole
batch (tests/test_lm_head.py checks them against the batched formula).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch


@dataclass
class Captured:
    """The LM head's input of the last forward inside `head_inputs`: [batch, kept positions, hidden]."""

    hidden: torch.Tensor | None = None


@contextmanager
def head_inputs(net: torch.nn.Module) -> Iterator[Captured]:
    """Inside the block, a forward of `net` records its LM head's input and skips the projection.

    The head sees zero positions (its output is [batch, 0, vocab]), so no logits are computed or kept;
    works through PEFT wrappers, whose output embeddings are the base model's.
    """
    head = net.get_output_embeddings()
    captured = Captured()

    def keep_input(_module: torch.nn.Module, args: tuple) -> tuple:
        captured.hidden = args[0]
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(keep_input)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On a CPU, torch's intra-op threads set to 1 inside the block.

    A one-example projection is a skinny matrix product whose CPU kernel can split its sums differently
    with 1 or 2 threads (measured here: [1, n, 16] x [16, 49152] differs in the last bits for n = 5..11),
    and a run on 2 processes gives each process fewer threads than 1 process has: one thread makes the eval
    loss the same on any number of processes (tests/test_federation_run.py::test_two_processes_match_one).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def example_losses(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> torch.Tensor:
    """Per-example mean cross-entropy of `head(hidden)` against `labels` (-100: ignored), one row at a time.

    hidden: [batch, positions, hidden] states that predict `labels` [batch, positions]; the logits are
    float32 (cast after `head` runs under `autocast`). A row without labels gives NaN, as the batched mean.
    """
    out = torch.empty(labels.shape[0], dtype=torch.float32, device=labels.device)
    for i in range(labels.shape[0]):
        with autocast(), one_cpu_thread(hidden.device):
            logits = head(hidden[i : i + 1]).float()
        tok = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels[i : i + 1], ignore_index=-100, reduction="none"
        )
        mask = (labels[i : i + 1] != -100).float()
        out[i] = ((tok * mask).sum(1) / mask.sum(1))[0]
        del logits, tok  # free this row's logits before the next row's
    return out
