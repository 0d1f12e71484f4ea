import math

import torch

from kit.zo.estimator import zo_step
from kit.zo.perturb import Perturber

from .conftest import tiny_llama


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (2, 12), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def _loss(model, batch):
    """Next-token cross-entropy in the model's own precision (HF's `.loss` upcasts only to fp32)."""
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten())


def _loss_fn(model, batch):
    def loss():
        with torch.no_grad():
            return _loss(model, batch)

    return loss


def test_projected_grad_matches_autograd_directional_derivative():
    model = tiny_llama(dtype=torch.float64)
    batch = _batch()
    params = list(model.parameters())
    pert = Perturber(params, chunk_size=1000)
    z = pert.z(17)
    loss = _loss(model, batch)
    grads = torch.autograd.grad(loss, params)
    directional = sum((g * zi.double()).sum() for g, zi in zip(grads, z, strict=True)).item()
    # eps 1e-4: the central difference's O(eps^2) error and the loss's own rounding noise (~1e-9,
    # amplified by 1/eps) are both below 1e-4 of the derivative there
    step = zo_step(pert, _loss_fn(model, batch), 0, 17, eps=1e-4, lr=0.0)
    assert math.isclose(step.projected_grad, directional, rel_tol=1e-4)


def test_update_equals_theta_minus_lr_g_z():
    model = tiny_llama(dtype=torch.float64)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    pert = Perturber(params, chunk_size=1000)
    step = zo_step(pert, _loss_fn(model, _batch()), 3, 21, eps=1e-4, lr=0.01)
    assert not step.skipped and step.seed_index == 3
    for p, w, zi in zip(params, before, pert.z(21), strict=True):
        torch.testing.assert_close(p, w - 0.01 * step.projected_grad * zi.double(), rtol=0, atol=1e-12)


def test_weight_decay_follows_the_reference_rule():
    model = tiny_llama(dtype=torch.float64)
    named = list(model.named_parameters())
    before = [p.detach().clone() for _, p in named]
    pert = Perturber([p for _, p in named], chunk_size=1000)
    step = zo_step(pert, _loss_fn(model, _batch()), 0, 5, eps=1e-4, lr=0.01, weight_decay=0.1)
    for (name, p), w, zi in zip(named, before, pert.z(5), strict=True):
        decay = 0.01 * 0.1 if p.dim() >= 2 else 0.0
        expected = w - 0.01 * (step.projected_grad * zi.double() + decay / 0.01 * w)
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-12, msg=name)


def test_nan_loss_restores_weights_and_skips_update():
    model = tiny_llama()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    pert = Perturber(params, chunk_size=1000)
    calls = []

    def nan_loss():
        calls.append(1)
        return torch.tensor(float("nan"))

    step = zo_step(pert, nan_loss, 0, 9, eps=1e-3, lr=1.0)
    assert step.skipped and step.projected_grad == 0.0 and len(calls) == 1
    for p, w in zip(params, before, strict=True):
        torch.testing.assert_close(p, w, rtol=0, atol=1e-6)


def test_grad_clip_skips_large_differences():
    model = tiny_llama()
    losses = iter([torch.tensor(5.0), torch.tensor(1.0)])
    step = zo_step(
        Perturber(list(model.parameters())), lambda: next(losses), 0, 1, eps=1e-3, lr=1.0, grad_clip=1.0
    )
    assert step.skipped and step.loss == 5.0


def test_grad_clip_zero_or_negative_is_off():
    model = tiny_llama()
    pert = Perturber(list(model.parameters()), chunk_size=1000)
    for clip in (-100.0, 0.0):  # -100 is the reference's default --grad_clip
        losses = iter([torch.tensor(5.0), torch.tensor(1.0)])
        step = zo_step(pert, losses.__next__, 0, 1, eps=1e-3, lr=1e-6, grad_clip=clip)
        assert not step.skipped and step.projected_grad == (5.0 - 1.0) / 2e-3
