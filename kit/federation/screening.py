"""Screening of a round's uplinks: untrusted bytes in, accepted uplinks and counted rejections out.

    screening = screen_uplinks(3, [(5, wire), (9, wire9)], sampled={5, 9}, decode=..., max_bytes=548)
    screening.accepted  # [Accepted(client=5, ...)] ascending client id
    screening.counts()  # {"corrupt": 1}

A server never aggregates what it cannot trust, and one bad message must not abort the round. Each
uplink goes through, in order (cheap checks first, so a flood of junk costs no decoding):

  1) unknown_client: the sender was not sampled this round;
  2) duplicate: the sender already has an accepted uplink this round (a replayed message);
  3) oversize: longer than the largest legal uplink (checked before decoding allocates anything);
  4) the method's decoder: truncated, corrupt, wrong_round, wrong_pool, non_finite, malformed,
     out_of_bound (values no honest client can send, `kit.federation.bounds`) (`MessageError.reason`);
  5) client_mismatch: the message names another client than the one that sent it.

Each rejection is logged as one warning line naming the client and the reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from kit.federation.messages import REASONS, MessageError

log = logging.getLogger(__name__)

# decode(wire) -> (client id named in the message, decoded value); raises MessageError
Decoder = Callable[[bytes], tuple[int, Any]]


@dataclass(frozen=True)
class Accepted:
    """An uplink that passed screening: its sender, its bytes and what the decoder returned."""

    client: int
    wire: bytes
    value: Any


@dataclass(frozen=True)
class Rejection:
    """An uplink that did not: its sender, the reason (one of `REASONS`) and the decoder's words."""

    client: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Screening:
    """The outcome of a round's screening."""

    accepted: list[Accepted] = field(default_factory=list)  # ascending client id
    rejected: list[Rejection] = field(default_factory=list)  # in arrival order

    def counts(self) -> dict[str, int]:
        """Rejections per reason, every reason present (zero when none)."""
        got = Counter(r.reason for r in self.rejected)
        return {reason: got[reason] for reason in REASONS}


def screen_uplinks(
    server_round: int,
    uplinks: Sequence[tuple[int, bytes]],
    sampled: Collection[int],
    decode: Decoder,
    max_bytes: int,
) -> Screening:
    """Screen `uplinks` ((sender, bytes) in arrival order) of `server_round` against the round's
    `sampled` clients; the first acceptable uplink of a sender wins, later ones are duplicates."""
    sampled = set(sampled)
    accepted: dict[int, Accepted] = {}
    rejected: list[Rejection] = []
    for sender, wire in uplinks:
        try:
            if sender not in sampled:
                raise MessageError(
                    f"client {sender} was not sampled in round {server_round}", "unknown_client"
                )
            if sender in accepted:
                raise MessageError(f"client {sender} already sent its uplink this round", "duplicate")
            if len(wire) > max_bytes:
                raise MessageError(f"{len(wire)} bytes, the largest legal uplink is {max_bytes}", "oversize")
            named, value = decode(wire)
            if named != sender:
                raise MessageError(f"the message names client {named}", "client_mismatch")
        except MessageError as e:
            reason = e.reason if e.reason in REASONS else "malformed"
            rejected.append(Rejection(sender, reason, str(e)))
            log.warning(
                "round %d: rejected the uplink of client %d: %s (%s)", server_round, sender, reason, e
            )
            continue
        accepted[sender] = Accepted(sender, wire, value)
    return Screening([accepted[c] for c in sorted(accepted)], rejected)
