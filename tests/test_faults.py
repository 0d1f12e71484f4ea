"""The simulated faults of a round: seeded, reproducible, independent of who else was sampled."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kit.federation.faults import FaultModel


def test_a_clients_fate_does_not_depend_on_who_else_was_sampled():
    model = FaultModel(dropout=0.5, straggler_prob=0.5, straggler_delay_s=10.0, deadline_s=5.0)
    together = model.round(7, 3, [9, 1, 5, 20])
    for c in (1, 5, 9, 20):
        alone = model.round(7, 3, [c])
        assert (c in together.dropped, c in together.late, together.delays[c]) == (
            c in alone.dropped,
            c in alone.late,
            alone.delays[c],
        )
    assert together == model.round(7, 3, [1, 5, 9, 20])  # same inputs, same fates
    assert sorted(together.arrived + together.missing) == [1, 5, 9, 20]
    assert model.round(7, 4, range(200)) != model.round(7, 3, range(200))  # rounds differ
    assert model.round(8, 3, range(200)) != model.round(7, 3, range(200))  # federation seeds differ


def test_dropout_drops_its_fraction_and_raising_it_only_adds_dropped_clients():
    clients = range(5000)
    low = FaultModel(dropout=0.1).round(1, 1, clients)
    high = FaultModel(dropout=0.3).round(1, 1, clients)
    assert abs(len(high.dropped) / 5000 - 0.3) < 0.03  # binomial sd 0.0065
    assert set(low.dropped) < set(high.dropped)
    assert not high.late and sorted(high.arrived + high.dropped) == list(clients)
    assert FaultModel().round(1, 1, clients).arrived == list(clients)  # off by default
    assert FaultModel(dropout=1.0).round(1, 1, [3, 4]).arrived == []


def test_stragglers_past_the_deadline_are_late():
    model = FaultModel(straggler_prob=0.4, straggler_delay_s=20.0, deadline_s=15.0)
    faults = model.round(3, 2, range(4000))
    delays = np.array([faults.delays[c] for c in range(4000)])
    stragglers = delays > 0
    assert abs(stragglers.mean() - 0.4) < 0.03
    assert abs(delays[stragglers].mean() - 20.0) < 2.0  # exponential with mean straggler_delay_s
    assert faults.late == [c for c in range(4000) if delays[c] > 15.0]
    assert abs(len(faults.late) / 4000 - 0.4 * math.exp(-15 / 20)) < 0.03
    no_deadline = FaultModel(straggler_prob=0.4, straggler_delay_s=20.0).round(3, 2, range(4000))
    assert not no_deadline.late and no_deadline.delays == faults.delays


def test_a_dropped_client_is_not_also_late():
    model = FaultModel(dropout=0.5, straggler_prob=1.0, straggler_delay_s=100.0, deadline_s=0.0)
    faults = model.round(0, 1, range(100))
    assert not set(faults.dropped) & set(faults.late) and not faults.arrived


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"dropout": 1.5}, "--fed.dropout"),
        ({"straggler_prob": -0.1}, "--fed.straggler_prob"),
        ({"straggler_delay_s": -1.0}, "--fed.straggler_delay_s"),
        ({"deadline_s": -2.0}, "--fed.deadline_s"),
    ],
)
def test_bad_fault_settings_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        FaultModel(**kwargs)
