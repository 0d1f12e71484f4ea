"""The honest-uplink bounds, the robust-rule warning and the collapse detector, as pure functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kit.divergence import DivergenceWatch, divergence_line
from kit.federation.bounds import (
    check_scalars,
    check_tensor_norm,
    payload_norm,
    robust_rule_warning,
    scalar_uplink_bound,
)
from kit.federation.messages import MessageError


def _honest_worst_case(tau: int, eps: float, c: float) -> float:
    """The largest accumulator an honest client can build: every one of its tau steps draws the
    same seed and has |L+ - L-| = c, the largest difference the ZO step keeps."""
    acc = np.float64(0.0)
    for _ in range(tau):
        acc += c / (2.0 * eps)
    return float(np.float32(acc))


@pytest.mark.parametrize(
    ("tau", "eps", "clip", "loss_range"), [(3, 1e-2, None, 100.0), (10, 1e-3, 2.5, 100.0)]
)
def test_the_scalar_bound_admits_the_worst_honest_uplink_and_nothing_far_beyond(tau, eps, clip, loss_range):
    bound = scalar_uplink_bound(tau, eps, clip, loss_range)
    c = clip if clip else loss_range
    worst = _honest_worst_case(tau, eps, c)
    assert bound == pytest.approx(worst, rel=1e-5)
    check_scalars(np.array([0.0, -worst, worst], dtype=np.float32), bound)  # accepted
    with pytest.raises(MessageError, match="seed 1 .* beyond the honest bound") as err:
        check_scalars(np.array([0.0, np.float32(worst * 1.001), 1.0], dtype=np.float32), bound)
    assert err.value.reason == "out_of_bound"
    with pytest.raises(MessageError):
        check_scalars(np.full(4, 3e38, dtype=np.float32), bound)
    check_scalars(np.full(4, 3e38, dtype=np.float32), None)  # screening off


def test_grad_clip_off_means_the_loss_range_bounds_the_difference():
    assert scalar_uplink_bound(4, 0.5, None, 10.0) == scalar_uplink_bound(4, 0.5, -100.0, 10.0)
    assert scalar_uplink_bound(4, 0.5, None, 10.0) == pytest.approx(4 * 10.0 / 1.0, rel=1e-5)


def test_tensor_norm_bound_is_relative_to_the_global_state():
    global_params = [torch.ones(3, 4), torch.full((4,), 2.0)]
    g = payload_norm(global_params)
    assert g == pytest.approx(math.sqrt(12 + 16))
    assert payload_norm([torch.full((2,), 3e38)]) == pytest.approx(
        3e38 * math.sqrt(2), rel=1e-6
    )  # no overflow
    check_tensor_norm(100 * g * 0.999, g, 16, 100.0, delta=True)
    with pytest.raises(MessageError, match="change have norm") as err:
        check_tensor_norm(100 * g * 1.001, g, 16, 100.0, delta=True)
    assert err.value.reason == "out_of_bound"
    check_tensor_norm(101 * g * 0.999, g, 16, 100.0, delta=False)  # values: ||theta_g|| + the change
    with pytest.raises(MessageError):
        check_tensor_norm(101 * g * 1.001, g, 16, 100.0, delta=False)
    check_tensor_norm(1e30, g, 16, None, delta=False)  # off
    # an all-zero global state: changes of rms up to ratio * 0.1 (here 10 per coordinate)
    check_tensor_norm(10 * math.sqrt(16) * 0.999, 0.0, 16, 100.0, delta=True)
    with pytest.raises(MessageError):
        check_tensor_norm(10 * math.sqrt(16) * 1.001, 0.0, 16, 100.0, delta=True)


def test_robust_rules_warn_when_they_are_the_mean():
    assert "median with 2 client(s) per round is the mean" in robust_rule_warning("median", 0.1, 2)
    assert robust_rule_warning("median", 0.1, 3) is None
    assert "trims nothing from 5" in robust_rule_warning("trimmed_mean", 0.1, 5)
    assert "to >= 0.2" in robust_rule_warning("trimmed_mean", 0.1, 5)
    assert "sample >= 3 clients" in robust_rule_warning("trimmed_mean", 0.4, 2)
    assert robust_rule_warning("trimmed_mean", 0.2, 5) is None
    assert robust_rule_warning("mean", 0.0, 1) is None


def test_divergence_uniform_loss_jump_and_nan():
    u = math.log(49152)
    watch = DivergenceWatch(factor=2.0, vocab_size=49152, reference=2.0)
    assert watch.observe(1, "train", 2.5) is None and watch.observe(1, "eval", 1.8) is None
    assert watch.observe(2, "eval", 3.5) is None  # below 2 x 1.8
    jump = watch.observe(3, "eval", 3.7)
    assert jump["round"] == 3 and "above 2 x its best 1.8000" in jump["why"]
    uniform = watch.observe(4, "train", u + 1e-5)
    assert "uniform predictor's ln(49152)" in uniform["why"]
    assert "nan" in watch.observe(5, "eval", float("nan"))["why"]
    assert [e["round"] for e in watch.events] == [3, 4, 5]
    line = divergence_line(jump, stopping=True)
    assert line.startswith("round 3: divergence: eval loss 3.7000") and "\n" not in line
    # a model that starts at the uniform loss (a random one) is not reported for staying there
    random_model = DivergenceWatch(factor=None, vocab_size=49152, reference=u - 5e-4)
    assert random_model.observe(1, "eval", u) is None
    restored = DivergenceWatch(factor=2.0, vocab_size=49152)
    restored.load_state_dict(watch.state_dict())
    assert restored.events == watch.events and restored.best_eval == 1.8
