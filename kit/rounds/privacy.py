"""A run's DP mechanism from its `fed` flags and its shape (clients, rounds); the same in every runtime.

    attach_dp(method, config.privacy, settings.seed, num_clients, fraction, rounds)

Lightning's loop, Flower's strategy and a Flower node's replica each call it once: the noise multiplier
(given, or derived from the target epsilon by the accountant) is then the same number everywhere.
"""

from __future__ import annotations

from functools import lru_cache

from kit.errors import UsageError
from kit.federation.server import sample_clients
from kit.methods.base import Method
from kit.privacy.accountant import calibrate, central_epsilon, local_epsilon
from kit.privacy.config import PrivacyConfig
from kit.privacy.mechanism import DPMechanism


def participations(seed: int, num_clients: int, fraction: float, rounds: int) -> tuple[int, ...]:
    """After each round 1..rounds: the most rounds any one client has been sampled in so far."""
    counts, out = [0] * num_clients, []
    for r in range(1, rounds + 1):
        for c in sample_clients(seed, r, num_clients, fraction):
            counts[c] += 1
        out.append(max(counts))
    return tuple(out)


@lru_cache(maxsize=16)
def dp_mechanism(
    privacy: PrivacyConfig, seed: int, num_clients: int, fraction: float, rounds: int
) -> DPMechanism | None:
    """The mechanism of a run of `rounds` rounds over `num_clients` clients (None: DP off).

    With `dp_target_epsilon`, sigma is the smallest whose epsilon after `rounds` is at most the target;
    a UsageError names the knobs when none is."""
    if not privacy.enabled:
        return None
    m = max(1, int(num_clients * fraction))
    counts = participations(seed, num_clients, fraction, rounds)
    delta = privacy.dp_delta
    sigma = privacy.dp_noise_multiplier
    if sigma is None:
        if privacy.dp_mode == "central":
            knobs = "--fed.fraction or trainer.max_epochs (rounds)"
            sigma = calibrate(
                lambda s: central_epsilon(s, num_clients, m, rounds, delta), privacy.dp_target_epsilon, knobs
            )
        else:
            knobs = "trainer.max_epochs (rounds) or --fed.fraction (a client's rounds)"
            last = counts[-1] if counts else 0
            sigma = calibrate(lambda s: local_epsilon(s, last, delta), privacy.dp_target_epsilon, knobs)
    return DPMechanism(
        privacy.dp_mode,
        float(privacy.dp_clip),
        float(sigma),
        delta,
        seed if privacy.dp_seed is None else privacy.dp_seed,
        num_clients,
        m,
        counts,
        privacy.dp_target_epsilon,
    )


def attach_dp(
    method: Method, privacy: PrivacyConfig, seed: int, num_clients: int, fraction: float, rounds: int
) -> None:
    """Give `method` the run's mechanism (`method.dp`; None when DP is off), refusing what it cannot do."""
    if privacy.dp_mode != "off" and not method.supports_dp:
        raise UsageError(
            f"--fed.dp_mode {privacy.dp_mode} is not implemented for {method.name} (its uplinks would go "
            "out un-noised); use --fed.dp_mode off, or a method with DP: fedkseed, fedzo, fedit, fedavg, ..."
        )
    if privacy.dp_mode == "central" and not method.central_dp:
        raise UsageError(
            f"--fed.dp_mode central does not cover {method.name}: its server also releases what it learns "
            "from the un-noised uplinks (the seed probabilities); use --fed.dp_mode local or "
            "--method fedkseed"
        )
    method.dp = dp_mechanism(privacy, seed, num_clients, fraction, rounds)
