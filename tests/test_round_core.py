"""The round core (kit/rounds) on its own: config per concern, round plans, the round's metrics."""

from __future__ import annotations

import math

import pytest

from kit.federation.faults import FaultModel
from kit.federation.screening import Screening
from kit.loop import FederatedLoop
from kit.rounds import ClientResult, RoundOutcome, plan_round, round_metrics
from kit.rounds.config import FLAG_DEFAULTS, FedConfig, init_defaults


def test_the_cli_flags_are_the_config_dataclasses_fields_with_their_defaults():
    assert init_defaults(FederatedLoop) == FLAG_DEFAULTS
    c = FedConfig.from_flags({"fraction": 0.1, "dropout": 0.2, "rouge_every": 3, "scalar_bound": 5.0})
    assert (c.fraction, c.faults.dropout, c.eval.rouge_every, c.settings.scalar_bound) == (0.1, 0.2, 3, 5.0)
    assert c.settings.local_steps == 200 and c.eval.eval_every == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"fraction": 0}, r"--fed\.fraction must be in \(0, 1\]"),
        ({"dropout": 2}, r"--fed\.dropout must be in \[0, 1\]"),
        ({"rouge_suites": ["x"]}, r"--fed\.rouge_suites must name"),
        ({"aggregation": "mode"}, r"--fed\.aggregation must be one of"),
        ({"local_step": 3}, r"unknown fed flag\(s\) local_step"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        FedConfig.from_flags(flags)


def test_eval_cadence():
    ev = FedConfig.from_flags({"eval_every": 2, "rouge_every": 0}).eval
    assert [r for r in range(6) if ev.loss_due(r, 5)] == [0, 2, 4, 5]
    assert [r for r in range(6) if ev.rouge_due(r, 5)] == [5]


def test_round_plans_carry_each_clients_steps_and_skip_missing_clients():
    faults = FaultModel(dropout=0.5)
    plan = plan_round(7, 3, 100, 0.2, faults, lambda c: 10 + c)  # a per-client budget
    assert len(plan.clients) == 20 and set(plan.training) <= set(plan.clients)
    assert plan.training == tuple(plan.faults.arrived) and 0 < len(plan.training) < 20
    assert all(plan.steps_of(c) == 10 + c for c in plan.training)
    same = plan_round(7, 3, 100, 0.2, faults, 5)
    assert same.clients == plan.clients and {n for _, n in same.steps} == {5}


def test_round_metrics_are_the_step_weighted_mean_loss_and_the_bytes():
    results = [ClientResult(3, b"x" * 40, 6.0, 3, 0), ClientResult(1, b"y" * 60, 6.0, 1, 2)]
    out = RoundOutcome(b"z" * 7, Screening([], []))
    m = round_metrics(results, out, {"fed/seeds_touched": 4.0})
    # mean over updating steps: (6 + 6) / (3 + 1) = 3, not the mean of the clients' means (2 + 6) / 2
    assert m["train/loss"] == 3.0 and m["zo/skipped_steps"] == 2.0
    traffic = m["fed/uplink_bytes_mean"], m["fed/uplink_bytes_max"], m["fed/downlink_bytes"]
    assert traffic == (50.0, 60.0, 7.0)
    assert m["fed/seeds_touched"] == 4.0
    empty = round_metrics([], RoundOutcome(b"", Screening([], [])), {})
    assert math.isnan(empty["train/loss"]) and empty["fed/uplink_bytes_max"] == 0.0
