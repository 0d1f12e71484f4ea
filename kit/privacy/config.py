"""The differential-privacy flags of the `fed` group, checked with errors naming the flag.

PrivacyConfig(dp_mode="central", dp_clip=1.0, dp_target_epsilon=8.0)   # noise derived from (8, 1e-5)
"""

from __future__ import annotations

from dataclasses import dataclass

from kit.errors import UsageError

DP_MODES = ("off", "central", "local")


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level DP of every uplink (docs/privacy.md)."""

    dp_mode: str = "off"
    """off; central: the server clips each client's update and noises the sum; local: each client
    clips and noises its own update before sending it."""
    dp_clip: float | None = None
    """C, the L2 bound of one client's update per round (FedKSeed: its K scalars; tensor methods: the
    flattened change of its shared parameters)."""
    dp_noise_multiplier: float | None = None
    """sigma: the noise's std is sigma * 2C (2C: a client's replace-one sensitivity); 0 clips only."""
    dp_target_epsilon: float | None = None
    """instead of sigma: the smallest sigma whose epsilon after all rounds is at most this."""
    dp_delta: float = 1e-5
    """delta of the reported (epsilon, delta)."""
    dp_seed: int | None = None
    """seed of the noise (null: the federation seed); keep it secret from whom the guarantee is against."""

    def __post_init__(self) -> None:
        if self.dp_mode not in DP_MODES:
            raise UsageError(f"--fed.dp_mode must be one of {', '.join(DP_MODES)}, got {self.dp_mode!r}")
        if not 0 < self.dp_delta < 1:
            raise UsageError(f"--fed.dp_delta must be in (0, 1), got {self.dp_delta}")
        knobs = ("dp_clip", "dp_noise_multiplier", "dp_target_epsilon")
        if self.dp_mode == "off":
            given = [f"--fed.{k}" for k in knobs if getattr(self, k) is not None]
            if given:
                need = "need(s) --fed.dp_mode central or local: set it or drop them"
                raise UsageError(f"{', '.join(given)} {need}")
            return
        if self.dp_clip is None or not self.dp_clip > 0:
            raise UsageError(f"--fed.dp_mode {self.dp_mode} needs --fed.dp_clip > 0, got {self.dp_clip}")
        if (self.dp_noise_multiplier is None) == (self.dp_target_epsilon is None):
            raise UsageError(
                f"--fed.dp_mode {self.dp_mode} needs exactly one of --fed.dp_noise_multiplier and "
                "--fed.dp_target_epsilon (the noise, or the epsilon it is derived from)"
            )
        if self.dp_noise_multiplier is not None and not self.dp_noise_multiplier >= 0:
            raise UsageError(f"--fed.dp_noise_multiplier must be >= 0, got {self.dp_noise_multiplier}")
        if self.dp_target_epsilon is not None and not self.dp_target_epsilon > 0:
            raise UsageError(f"--fed.dp_target_epsilon must be > 0, got {self.dp_target_epsilon}")

    @property
    def enabled(self) -> bool:
        return self.dp_mode != "off"
