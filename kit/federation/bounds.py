"""What no honest client can send: bounds on uplinks derived from the run's own settings.

    b = scalar_uplink_bound(local_steps=10, zo_eps=1e-3, grad_clip=None, loss_range=100.0)  # 5e5
    check_scalars(uplink.scalars, b)        # MessageError(reason "out_of_bound") beyond it
    check_tensor_norm(norm, global_norm, ratio=100.0, delta=False)

FedKSeed scalars. A client's uplink holds, per seed j, the sum of its scalar gradients
g = (L+ - L-) / (2 eps) over the local steps that drew j: at most tau of them. An honest step has
|L+ - L-| <= grad_clip when `grad_clip` is set (larger differences are skipped, `kit.zo.estimator`),
and otherwise <= the loss's own range: the loss is a mean cross-entropy, >= 0, and `loss_range`
(default 100 nats, a model giving the average target token probability e^-100; a uniform predictor
over a 49k vocabulary has 10.8) bounds it from above. So every honest |acc_j| <= tau * C / (2 eps)
with C = grad_clip or loss_range. We chose this bound over a robust statistic of the round's
uplinks (e.g. a multiple of their median): it needs no other client, so it holds with 1 or 2 clients
per round, colluding clients cannot move it, and by construction it never rejects an honest client.
What it leaves an attacker: any values inside the bound, on any seeds (with the mean rule one
client can still move a seed's G by w_c * b); `--fed.scalar_bound`, a tighter clip, and the
robust rules (with >= 3 clients) bound that further.

Tensor payloads (FedZO deltas, first-order parameter values): a client's change is bounded
relative to the global state it started from, ||delta|| <= ratio * ||theta_g|| (whole payload,
L2, float64); for payloads of values, ||theta_c|| <= ||theta_g|| + ratio * ||theta_g|| (the
triangle inequality with the same change bound, checkable without holding theta_g). ratio 100 is
far above what tau local steps of an honest client do and far below an overflowing or scaled
payload. Inside the bound a client can still pull the mean by w_c * ratio * ||theta_g||: the robust
rules (median, trimmed mean with >= 3 clients) bound that further.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from kit.federation.messages import MessageError

SLACK = 1 + 1e-6  # float32 rounding of the uplink's float64 sums
MIN_RMS = 0.1  # tensor bound's floor: a global state of norm 0 still allows changes of rms ratio * 0.1


def scalar_uplink_bound(local_steps: int, zo_eps: float, grad_clip: float | None, loss_range: float) -> float:
    """The largest |scalar| an honest FedKSeed client can send: tau * C / (2 eps), C = grad_clip
    (when > 0) else loss_range."""
    if not zo_eps > 0:
        raise ValueError(f"--model.zo_eps must be > 0, got {zo_eps}")
    c = grad_clip if grad_clip is not None and grad_clip > 0 else loss_range
    return local_steps * c / (2.0 * zo_eps) * SLACK


def check_scalars(scalars: np.ndarray, bound: float | None) -> None:
    """Raise MessageError("out_of_bound") when some |scalar| exceeds `bound` (None: unchecked)."""
    if bound is None or scalars.size == 0:
        return
    worst = float(np.max(np.abs(scalars.astype(np.float64))))
    if worst > bound:
        j = int(np.argmax(np.abs(scalars.astype(np.float64))))
        raise MessageError(
            f"scalar of seed {j} is {float(scalars[j]):.4g}, beyond the honest bound {bound:.4g} "
            "(tau * C / (2 eps))",
            "out_of_bound",
        )


def payload_norm(tensors: Iterable[torch.Tensor]) -> float:
    """L2 norm of all the tensors together, in float64 (no overflow for float32 payloads)."""
    total = 0.0
    for t in tensors:
        total += float(torch.sum(torch.square(t.detach().to(torch.float64))))
    return math.sqrt(total)


def tensor_norm_bound(global_norm: float, numel: int, ratio: float, delta: bool) -> float:
    """The largest payload norm an honest client sends: a change (`delta`) of at most ratio * s,
    values of at most ||theta_g|| + ratio * s, with s = max(||theta_g||, MIN_RMS * sqrt(numel)) (a
    floor for an all-zero global state)."""
    scale = max(global_norm, MIN_RMS * math.sqrt(numel))
    return ((0.0 if delta else global_norm) + ratio * scale) * SLACK


def check_tensor_norm(norm: float, global_norm: float, numel: int, ratio: float | None, delta: bool) -> None:
    """Raise MessageError("out_of_bound") when a payload's norm exceeds its bound (ratio None: off)."""
    if ratio is None:
        return
    bound = tensor_norm_bound(global_norm, numel, ratio, delta)
    if not norm <= bound:
        what = "change" if delta else "parameters"
        raise MessageError(
            f"payload {what} have norm {norm:.4g}, beyond {bound:.4g} "
            f"(from a change of {ratio:g} x the global parameters' norm {global_norm:.4g})",
            "out_of_bound",
        )


def robust_rule_warning(aggregation: str, trim_fraction: float, clients_per_round: int) -> str | None:
    """A warning when the robust rule cannot do what its name promises with this many clients per
    round (None when it can, or for the plain mean)."""
    n = clients_per_round
    if aggregation == "median" and n <= 2:
        return (
            f"--fed.aggregation median with {n} client(s) per round is the mean: it bounds no client's "
            "influence; sample >= 3 clients per round (--fed.fraction) or rely on the uplink bound"
        )
    if aggregation == "trimmed_mean" and int(trim_fraction * n) == 0:
        fix = (
            f"raise --fed.trim_fraction to >= {1 / n:.3g} or sample more clients"
            if n >= 3
            else "sample >= 3 clients per round (--fed.fraction)"
        )
        return (
            f"--fed.aggregation trimmed_mean with --fed.trim_fraction {trim_fraction} trims nothing from "
            f"{n} client(s) per round: it is the unweighted mean; {fix}"
        )
    return None
