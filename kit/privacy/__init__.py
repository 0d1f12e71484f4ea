"""Client-level differential privacy: the flags (`config`), the mechanism's math (`mechanism`) and
the accountant that turns them into (epsilon, delta) (`accountant`, over the `dp-accounting` library).

No Lightning, Flower or torch import: the methods' server rules and clients call the pure functions,
the round core (kit/rounds/privacy.py) builds the mechanism of a run. See docs/privacy.md.
"""

from kit.privacy.config import DP_MODES, PrivacyConfig
from kit.privacy.mechanism import DPMechanism, clip_l2, gaussian_noise

__all__ = ["DP_MODES", "DPMechanism", "PrivacyConfig", "clip_l2", "gaussian_noise"]
