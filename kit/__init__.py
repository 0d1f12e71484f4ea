"""fedkseed-kit: federated full-parameter LLM tuning by zeroth-order steps over a pool of K seeds."""

__version__ = "0.1.0"
