"""The run reporter: what the progress bar shows between evaluations."""

from __future__ import annotations

import math

from kit.reporting import RunReporter


def _round(reporter: RunReporter, eval_loss: float | None) -> None:
    metrics = {"train/loss": 3.0, **({"eval/loss": eval_loss} if eval_loss is not None else {})}
    reporter.record_round(metrics, [100], 50, 0)


def test_progress_shows_the_last_measured_eval_loss_not_nan():
    reporter = RunReporter()
    assert math.isnan(reporter.last_eval_loss())  # nothing measured yet
    reporter.eval_loss_before = 2.5
    assert reporter.last_eval_loss() == 2.5
    _round(reporter, None)  # round 1: no eval (--fed.eval_every 2)
    assert reporter.last_eval_loss() == 2.5
    _round(reporter, 2.25)
    _round(reporter, None)
    assert reporter.last_eval_loss() == 2.25
    assert reporter.history["eval_loss"] == [None, 2.25, None]
