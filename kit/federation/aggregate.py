"""Server-side math as plain functions: client weights, aggregation, FedKSeed-Pro probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def client_weights(num_samples: Sequence[int], equal: bool = False) -> np.ndarray:
    """w_c proportional to the client's sample count (or 1/n with `equal`), summing to 1."""
    counts = np.asarray(num_samples, dtype=np.float64)
    if counts.size == 0:
        raise ValueError("no clients to weight")
    if equal:
        return np.full(counts.size, 1.0 / counts.size)
    if np.any(counts <= 0):
        raise ValueError("every client needs at least one sample to be weighted by its sample count")
    return counts / counts.sum()


def aggregate(scalars: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """G_j = sum_c w_c acc_c[j], summed in the given (client id) order, in float64."""
    total = np.zeros(len(scalars[0]), dtype=np.float64)
    for acc, w in zip(scalars, weights, strict=True):
        total += w * np.asarray(acc, dtype=np.float64)
    return total


def pro_probabilities(abs_sum: np.ndarray, count: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """FedKSeed-Pro seed probabilities (reference `server.py: calculate_probabilities`).

    psi_j = mean over seed j's history of |clip(g, +-bias_loss_clip)| (given as a running sum of the
    clipped magnitudes and the history length), min-max normalised, then softmax(temperature * psi).
    `temperature` is the paper's optional scaling; 1.0 is the reference.
    """
    psi = abs_sum / np.maximum(count, 1)
    norm = (psi - psi.min()) / (psi.max() + 1e-10 - psi.min())
    logits = temperature * norm
    e = np.exp(logits - logits.max())
    return e / e.sum()
