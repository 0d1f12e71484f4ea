import hashlib
import subprocess
import sys

import pytest
import torch

from kit.zo.perturb import Perturber

from .conftest import REPO, tiny_llama


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_z_is_a_pure_function_of_seed_and_parameter(tiny_model):
    a = Perturber(list(tiny_model.parameters()), chunk_size=1000).z(1234)
    b = Perturber(list(tiny_model.parameters()), chunk_size=1000).z(1234)
    c = Perturber(list(tiny_model.parameters()), chunk_size=1000).z(1235)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    flat = torch.cat([t.flatten() for t in a])
    assert abs(flat.mean().item()) < 0.02 and abs(flat.std().item() - 1) < 0.02


def test_z_does_not_depend_on_thread_count(tiny_model):
    params = list(tiny_model.parameters())
    one = Perturber(params, chunk_size=1000, num_threads=1).z(7)
    two = Perturber(params, chunk_size=1000, num_threads=2).z(7)
    assert _digest(one) == _digest(two)


def test_z_is_identical_in_another_process(tiny_model):
    code = (
        "import hashlib, torch, sys; sys.path.insert(0, 'tests');"
        "from conftest import tiny_llama; from kit.zo.perturb import Perturber;"
        "z = Perturber(list(tiny_llama().parameters()), chunk_size=1000).z(99);"
        "h = hashlib.sha256(); [h.update(t.numpy().tobytes()) for t in z]; print(h.hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    here = Perturber(list(tiny_model.parameters()), chunk_size=1000).z(99)
    assert out.stdout.strip() == _digest(here)


@pytest.mark.parametrize("keep_z", [False, True])
def test_add_applies_alpha_times_z_in_place(tiny_model, keep_z):
    params = list(tiny_model.parameters())
    before = _weights(tiny_model)
    pert = Perturber(params, keep_z=keep_z, chunk_size=1000)
    z = pert.z(5)
    with torch.no_grad():
        pert.add(5, 0.25)
    for p, w, zi in zip(params, before, z, strict=True):
        assert torch.equal(p, w + 0.25 * zi)


@pytest.mark.parametrize("keep_z", [False, True])
def test_perturb_then_restore_is_identity(tiny_model, keep_z):
    params = list(tiny_model.parameters())
    before = _weights(tiny_model)
    pert = Perturber(params, keep_z=keep_z, chunk_size=1000)
    eps = 1e-3
    for scale in (1.0, -2.0, 1.0):
        pert.add(42, scale * eps)
    for p, w in zip(params, before, strict=True):
        # +eps, -2 eps, +eps returns to theta up to fp32 rounding of eps*z on top of theta
        assert torch.allclose(
            p, w, rtol=0, atol=4 * torch.finfo(torch.float32).eps * (w.abs().max() + eps * 8)
        )


def test_kept_and_regenerated_modes_give_identical_weights():
    a, b = tiny_llama(), tiny_llama()
    pa = Perturber(list(a.parameters()), keep_z=True, chunk_size=1000)
    pb = Perturber(list(b.parameters()), keep_z=False, chunk_size=1000)
    for pert in (pa, pb):
        for seed, alpha in ((3, 1e-3), (3, -2e-3), (3, 1e-3), (8, 0.5)):
            pert.add(seed, alpha, decay=0.1 if seed == 8 else 0.0)
    assert _digest(_weights(a)) == _digest(_weights(b))


def test_rademacher_draws_plus_minus_one(tiny_model):
    z = Perturber(list(tiny_model.parameters()), distribution="rademacher").z(3)
    flat = torch.cat([t.flatten() for t in z])
    assert set(flat.unique().tolist()) == {-1.0, 1.0}


def test_weight_decay_spares_norms_and_biases(tiny_model):
    params = dict(tiny_model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    pert = Perturber(list(params.values()), chunk_size=1000)
    pert.add(11, 0.0, decay=0.5)
    for name, p in params.items():
        expected = before[name] * 0.5 if p.dim() >= 2 else before[name]
        assert torch.equal(p, expected), name


def test_unknown_distribution_names_the_flag(tiny_model):
    with pytest.raises(ValueError, match="--model.distribution"):
        Perturber(list(tiny_model.parameters()), distribution="uniform")
