"""Noticing a collapse: a loss that jumps far above its best, or lands on the uniform predictor's.

    watch = DivergenceWatch(factor=2.0, vocab_size=49152, reference=eval_loss_before)
    event = watch.observe(3, "eval", 10.8027)   # {"round": 3, "loss": "eval", ...} or None

Two signs, checked on every round's train loss and every measured eval loss:

* uniform: the loss equals ln(vocab) within `uniform_tol` nats, the cross-entropy of a model whose
  logits are all equal (what a run hit by an overflowing update shows); off when the model already
  started there (its loss before training within `uniform_tol` of ln(vocab));
* jump (eval loss only: it is measured on the same held-out set every time, while a round's train
  loss depends on which clients were sampled): the eval loss exceeds `factor` times the best eval
  loss so far (the loss before training included);
* a non-finite loss.

The loop warns in one line, records each event in `summary.json` (`divergence`), and with
`--fed.stop_on_divergence` stops, leaving the last good round's checkpoint in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class DivergenceWatch:
    """Per-run state of the collapse detector (checkpointed with the loop)."""

    factor: float | None = 2.0
    vocab_size: int | None = None
    reference: float | None = None  # the eval loss before training
    uniform_tol: float = 1e-3
    best_eval: float | None = None
    events: list[dict] = field(default_factory=list)

    @property
    def uniform_loss(self) -> float | None:
        return math.log(self.vocab_size) if self.vocab_size else None

    def _uniform_armed(self) -> bool:
        u, ref = self.uniform_loss, self.reference
        return u is not None and not (ref is not None and abs(ref - u) <= self.uniform_tol)

    def observe(self, server_round: int, kind: str, loss: float | None) -> dict | None:
        """Check round `server_round`'s `kind` ("train" or "eval") loss; returns the event, if any."""
        if loss is None:
            return None
        why = None
        if not math.isfinite(loss):
            why = f"{kind} loss is {loss}"
        elif self._uniform_armed() and abs(loss - self.uniform_loss) <= self.uniform_tol:
            why = (
                f"{kind} loss {loss:.4f} is the uniform predictor's ln({self.vocab_size}) = "
                f"{self.uniform_loss:.4f}"
            )
        elif kind == "eval":
            best = self.best_eval if self.best_eval is not None else self.reference
            if self.factor is not None and best is not None and best > 0 and loss > self.factor * best:
                why = f"eval loss {loss:.4f} is above {self.factor:g} x its best {best:.4f}"
            self.best_eval = loss if best is None else min(best, loss)
        if why is None:
            return None
        event = {"round": server_round, "loss": kind, "value": loss, "why": why}
        self.events.append(event)
        return event

    def state_dict(self) -> dict:
        return {"best_eval": self.best_eval, "events": list(self.events), "reference": self.reference}

    def load_state_dict(self, state: dict) -> None:
        self.best_eval = state.get("best_eval")
        self.events = list(state.get("events", []))
        self.reference = state.get("reference")


def divergence_line(event: dict, stopping: bool) -> str:
    """The one warning line of a divergence event."""
    then = (
        "stopping (--fed.stop_on_divergence); the last good round's checkpoint is kept"
        if stopping
        else "continuing (pass --fed.stop_on_divergence true to stop at a divergence)"
    )
    return f"round {event['round']}: divergence: {event['why']}; {then}"
