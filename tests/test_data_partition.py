"""Label-Dirichlet and iid partitions of example indices over clients."""

from __future__ import annotations

import numpy as np
import pytest

from kit.data.partition import dirichlet_partition, iid_partition

LABELS = np.random.default_rng(0).integers(0, 8, size=3000)


def skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean over clients of the share of its most frequent label (1.0 = every client single-label)."""
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


def test_dirichlet_partition_covers_every_index_once():
    parts = dirichlet_partition(LABELS, num_clients=40, alpha=0.5, seed=1)
    assert len(parts) == 40
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


def test_every_client_has_min_size():
    parts = dirichlet_partition(LABELS, num_clients=40, alpha=0.5, seed=2, min_size=25)
    assert min(len(p) for p in parts) >= 25


def test_smaller_alpha_is_more_skewed():
    skewed = dirichlet_partition(LABELS, num_clients=30, alpha=0.1, seed=3)
    balanced = dirichlet_partition(LABELS, num_clients=30, alpha=100.0, seed=3)
    assert skew(skewed, LABELS) > 0.6 > 0.25 > skew(balanced, LABELS)


def test_every_class_present_is_covered_whatever_its_code():
    labels = np.array([3] * 50 + [7] * 50 + [100] * 50)  # the reference only looped over codes < 3
    parts = dirichlet_partition(labels, num_clients=5, alpha=1.0, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(150))


def test_partition_is_seeded_and_leaves_the_global_rng_alone():
    state = np.random.get_state()[1].copy()
    first = dirichlet_partition(LABELS, num_clients=20, alpha=0.5, seed=7)
    again = dirichlet_partition(LABELS, num_clients=20, alpha=0.5, seed=7)
    other = dirichlet_partition(LABELS, num_clients=20, alpha=0.5, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert np.array_equal(np.random.get_state()[1], state)


def test_impossible_min_size_raises():
    with pytest.raises(ValueError, match="at least 10 examples"):
        dirichlet_partition(LABELS[:100], num_clients=11, alpha=0.5, seed=0)


def test_iid_partition_gives_the_remainder_to_the_last_client():
    parts = iid_partition(103, num_clients=10, seed=0)
    assert [len(p) for p in parts] == [10] * 9 + [13]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(103))
    with pytest.raises(ValueError, match="cannot split"):
        iid_partition(5, num_clients=6, seed=0)
