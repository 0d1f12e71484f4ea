"""Robust aggregation against an independent statement (Python's statistics, column by column)."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from kit.federation.aggregate import aggregate, client_weights
from kit.federation.messages import DOWNLINK, UPLINK, Uplink
from kit.federation.robust import coordinate_median, robust_aggregate, trimmed_mean
from kit.federation.seeds import SeedPool
from kit.federation.server import Server
from kit.federation.tensors import decode_tensors
from kit.methods import FedSettings, build_method
from kit.module import FedKSeedModule

POOL = SeedPool(8, federation_seed=5)


def _columns_median(rows: np.ndarray) -> np.ndarray:
    return np.array([statistics.median(rows[:, j].tolist()) for j in range(rows.shape[1])])


def _columns_trimmed_mean(rows: np.ndarray, trim: float) -> np.ndarray:
    n, out = rows.shape[0], []
    cut = int(trim * n)  # the usual definition: int(proportion * n) dropped at each end
    for j in range(rows.shape[1]):
        kept = sorted(rows[:, j].tolist())[cut : n - cut]
        out.append(statistics.fmean(kept))
    return np.array(out)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 11])
def test_median_and_trimmed_mean_match_the_column_by_column_statement(n):
    rows = np.random.default_rng(n).standard_normal((n, 40)).astype(np.float32)
    rows[:, :5] = 0.0  # seeds nobody touched
    assert np.array_equal(coordinate_median(rows), _columns_median(rows.astype(np.float64)))
    for trim in (0.0, 0.1, 0.2, 0.25, 0.34, 0.49):
        np.testing.assert_allclose(trimmed_mean(rows, trim), _columns_trimmed_mean(rows, trim), rtol=1e-12)


def test_bad_rule_or_trim_names_the_flag():
    with pytest.raises(ValueError, match="--fed.aggregation"):
        robust_aggregate(np.ones((2, 3)), "mode")
    with pytest.raises(ValueError, match="--fed.trim_fraction"):
        trimmed_mean(np.ones((2, 3)), 0.5)
    with pytest.raises(ValueError, match="--fed.aggregation"):
        FedSettings(aggregation="max")
    with pytest.raises(ValueError, match="--fed.trim_fraction"):
        FedSettings(trim_fraction=-0.1)
    with pytest.raises(ValueError, match="--fed.scalar_bound"):
        FedSettings(scalar_bound=0.0)


def _uplinks(rows: np.ndarray) -> list[Uplink]:
    return [Uplink(1, c, r.astype(np.float32)) for c, r in enumerate(rows)]


def test_one_bad_client_cannot_move_the_median_and_untouched_seeds_count_as_zero():
    honest = np.zeros((4, 8), dtype=np.float32)
    honest[:, 0] = [1.0, 2.0, 3.0, 4.0]  # every client touched seed 0
    honest[0, 5] = 7.0  # only client 0 touched seed 5: the others' 0 outvotes it
    bad = np.full((1, 8), 1e6, dtype=np.float32)
    rows = np.vstack([honest, bad])
    g = Server(POOL, aggregation="median").aggregate_train(_uplinks(rows), [1] * 5).scalars
    assert g.tolist() == [3.0, 0, 0, 0, 0, 0, 0, 0]
    mean = Server(POOL).aggregate_train(_uplinks(rows), [1] * 5).scalars
    assert mean[0] > 1e5  # under the mean the same client moves every seed
    trimmed = Server(POOL, aggregation="trimmed_mean", trim_fraction=0.2).aggregate_train(
        _uplinks(rows), [1] * 5
    )
    # drops 1 low and 1 high value per seed: seed 5 keeps (0, 0, 7), the bad 1e6 never counts
    assert trimmed.scalars.tolist() == pytest.approx([3.0, 0, 0, 0, 0, 7 / 3, 0, 0])


def test_scalar_bound_clips_each_client_before_the_weighted_mean_and_in_pro_history():
    rows = np.array([[5.0, -0.5, 0, 0, 0, 0, 0, 0], [-9.0, 0.25, 2.0, 0, 0, 0, 0, 0]], dtype=np.float32)
    server = Server(POOL, pro=True, aggregation="mean", scalar_bound=1.0)
    g = server.aggregate_train(_uplinks(rows), [1, 3]).scalars
    clipped = [np.clip(r, -1.0, 1.0) for r in rows]
    assert np.array_equal(g, aggregate(clipped, client_weights([1, 3])).astype(np.float32))
    assert server.abs_sum[:3].tolist() == [2.0, 0.75, 1.0]  # history of the clipped magnitudes


def test_robust_rules_ignore_sample_counts():
    rows = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    a = Server(POOL, aggregation="median").aggregate_train(_uplinks(rows), [1, 1, 1, 1, 1]).scalars
    b = Server(POOL, aggregation="median").aggregate_train(_uplinks(rows), [1, 9, 1, 99, 1]).scalars
    assert np.array_equal(a, b) and np.array_equal(a, coordinate_median(rows).astype(np.float32))


@pytest.mark.parametrize(("rule", "statement"), [("median", _columns_median), ("trimmed_mean", None)])
def test_tensor_payloads_aggregate_by_the_robust_rule(rule, statement):
    hp = FedKSeedModule(model="unused", method="fedavg").hparams
    method = build_method("fedavg", hp, FedSettings(aggregation=rule, trim_fraction=0.25))
    method.named = [("w", torch.zeros(2, 3)), ("b", torch.zeros(4))]
    values = torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    wires = [
        (c, method.encode_uplink(1, c, {"w": v[:6].reshape(2, 3), "b": v[6:]})) for c, v in enumerate(values)
    ]
    down, screening = method.aggregate_train(1, wires, {c: 1 for c in range(5)})
    got = decode_tensors(down, DOWNLINK, method.spec, "float32", expected_round=1).tensors
    flat = torch.cat([got["w"].reshape(-1), got["b"]]).numpy()
    rows = values.numpy().astype(np.float64)
    expected = _columns_median(rows) if rule == "median" else _columns_trimmed_mean(rows, 0.25)
    np.testing.assert_allclose(
        flat, expected.astype(np.float32), rtol=0, atol=0 if rule == "median" else 1e-6
    )
    assert len(screening.accepted) == 5 and UPLINK != DOWNLINK


def test_scalar_bound_is_refused_for_tensor_payloads():
    hp = FedKSeedModule(model="unused", method="fedit").hparams
    with pytest.raises(ValueError, match="--fed.scalar_bound .* fedit"):
        build_method("fedit", hp, FedSettings(scalar_bound=1.0))
