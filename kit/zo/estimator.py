"""The two-point zeroth-order step of FedKSeed, done in place on the model's own weights.

No copy of the model, no autograd graph: the weights are moved by +eps z, -2 eps z and back, and
the restore is fused with the update (scales +1, -2, +1 as in MeZO). float16 / bfloat16 master
weights take the reference's passes instead (zhenqincn/FedKSeed optimizers/mezo_optimizer.py): +eps,
-2 eps, +eps, then the update, each out of place and rounded to the dtype (kit/zo/master.py), also
when a step is skipped; the weights drift within a client's steps by that rounding, as there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kit.zo.perturb import Perturber


@dataclass(frozen=True)
class ZOStep:
    """The outcome of one step: which seed, its scalar gradient, the loss at +eps, and whether skipped."""

    seed_index: int
    projected_grad: float
    loss: float
    skipped: bool = False


@dataclass(frozen=True)
class Probe:
    """One finite-difference probe along z(seed): the scalar g, the loss at +eps and whether it was
    skipped. `pending`: the weights are left at theta + pending * z (0 when skipped: restored), so
    the caller's next pass along z(seed) can carry the restore (`Perturber.update(restore=-pending)`)."""

    grad: float
    loss: float
    skipped: bool
    pending: float


def probe(
    perturber: Perturber,
    loss_fn: Callable[[], torch.Tensor],
    seed: int,
    eps: float,
    grad_clip: float | None = None,
    base_loss: float | None = None,
) -> Probe:
    """g along z(seed): central (L+ - L-) / 2 eps, or forward (L+ - `base_loss`) / eps when the loss
    at theta is given (DeComFL's rge-forward). A non-finite loss or a difference above `grad_clip`
    (None or <= 0: off) restores the weights and skips: g = 0."""
    clip = grad_clip if grad_clip is not None and grad_clip > 0 else None
    # 1) perturb +eps, loss at theta + eps z
    perturber.add(seed, eps)
    loss_plus = float(loss_fn())
    if base_loss is not None:  # forward: one perturbed loss against the unperturbed one
        diff = loss_plus - base_loss
        if not math.isfinite(loss_plus) or (clip is not None and abs(diff) > clip):
            perturber.add(seed, -eps)
            return Probe(0.0, loss_plus, True, 0.0)
        return Probe(diff / eps, loss_plus, False, eps)
    if not math.isfinite(loss_plus):
        if perturber.master is not None:  # the reference's passes (-2 eps, +eps) without the forward
            perturber.add(seed, -2.0 * eps)
            perturber.add(seed, eps)
        else:
            perturber.add(seed, -eps)  # restore, skip the second forward
        return Probe(0.0, loss_plus, True, 0.0)
    # 2) perturb -2 eps, loss at theta - eps z
    perturber.add(seed, -2.0 * eps)
    loss_minus = float(loss_fn())
    diff = loss_plus - loss_minus
    if not math.isfinite(loss_minus) or (clip is not None and abs(diff) > clip):
        perturber.add(seed, eps)
        return Probe(0.0, loss_plus, True, 0.0)
    return Probe(diff / (2.0 * eps), loss_plus, False, -eps)


def zo_step(
    perturber: Perturber,
    loss_fn: Callable[[], torch.Tensor],
    seed_index: int,
    seed: int,
    *,
    eps: float,
    lr: float,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
) -> ZOStep:
    """One ZO-SGD step along z(seed): returns the projected gradient g = (L+ - L-) / 2 eps.

    A non-finite loss (or |L+ - L-| above `grad_clip`, as the reference's `--grad_clip`) restores
    the weights and skips the update: `skipped=True`, `projected_grad=0`. `grad_clip` None or <= 0
    is off (the reference's default is -100).
    """
    p = probe(perturber, loss_fn, seed, eps, grad_clip)
    if p.skipped:
        return ZOStep(seed_index, 0.0, p.loss, skipped=True)
    # 3) restore +eps and update theta <- theta - lr (g z + wd theta), fused in one pass
    perturber.update(seed, lr, p.grad, decay=lr * weight_decay, restore=-p.pending)
    return ZOStep(seed_index, p.grad, p.loss)
