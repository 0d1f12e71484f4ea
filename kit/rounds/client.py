"""A client's local training in a round: the method's steps, the loss and skip counters, the uplink."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from kit.methods.base import LossFn, Method, StepOutcome


@dataclass(frozen=True)
class ClientResult:
    """What a client sends back after a round: its uplink bytes and its training counters."""

    client: int
    wire: bytes
    loss_sum: float  # sum of the losses of the steps that updated
    steps: int  # steps that updated
    skipped: int  # steps skipped (non-finite loss, clipped)
    num_examples: int = 0  # the client's sample count (the server's aggregation weight)


class ClientTally:
    """The counters of one client's round, fed step by step (Lightning drives the steps itself)."""

    def __init__(self, client: int) -> None:
        self.client, self.loss, self.steps, self.skipped = client, 0.0, 0, 0

    def add(self, out: StepOutcome) -> None:
        if out.skipped:
            self.skipped += 1
        else:
            self.loss, self.steps = self.loss + out.loss, self.steps + 1

    def result(self, wire: bytes, num_examples: int = 0) -> ClientResult:
        return ClientResult(self.client, wire, self.loss, self.steps, self.skipped, num_examples)


def train_client(
    method: Method,
    server_round: int,
    client: int,
    batches: Iterable[dict],
    loss_fn: LossFn,
    saved_global: Callable[[], Iterable[torch.Tensor]],
    num_examples: int = 0,
) -> ClientResult:
    """`client`'s local steps of `server_round` over `batches` (each holds its `local_step`), from the
    global parameters the model holds now; returns its uplink and counters."""
    update = method.client(server_round, client, loss_fn, saved_global)
    tally = ClientTally(client)
    for batch in batches:
        tally.add(update.step(batch, int(batch["local_step"])))
    return tally.result(update.finish(), num_examples)
