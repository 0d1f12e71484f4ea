"""One z on every device: the portable torch backend equals the native kernels and the numpy
definition bit for bit, `auto` picks a backend of that one z, and GPU tests (marked `gpu`) check
the portable and Triton backends on a CUDA device against the native bits."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from kit.zo import definition, native, portable
from kit.zo.perturb import Perturber
from kit.zo.seeding import mix

from .conftest import fed_args, tiny_llama
from .zo_reference import _ref_cos_sin, _ref_radius, ref_z

KEYS = [0, 1, 12345, mix(7, 3, 2), (1 << 63) - 1, (1 << 64) - 1]
SIZES = [1, 15, 63, 64, 65, 1000, 4099, 1 << 16]
HAS_NATIVE = native.available()
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="no C compiler for the native kernels")


def bits(t) -> np.ndarray:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def native_z(n: int, key: int, distribution: str) -> np.ndarray:
    out = np.empty(n, dtype=np.float32)
    native.load().fill(out.ctypes.data, n, key, distribution)
    return out


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(bits(t).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_portable_matches_the_numpy_definition(distribution):
    for key in KEYS:
        for n in SIZES:
            got = portable.z_chunk(n, key, distribution)
            assert np.array_equal(bits(got), bits(ref_z(n, key, distribution))), (key, n)


@needs_native
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_portable_matches_native_on_full_chunks(distribution):
    for key in (3, mix(11, 0, 5)):
        n = 1 << 20
        assert np.array_equal(
            bits(portable.z_chunk(n, key, distribution)), bits(native_z(n, key, distribution))
        )


def test_radius_matches_the_definition_for_every_uniform_value():
    """Every one of the 2^24 values of u (the tails included: u = 2^-24 gives |z| = 5.77, u = 1 gives 0)."""
    w = (np.arange(1 << 24, dtype=np.uint32)) << np.uint32(8)
    got = portable._radius(torch.from_numpy(w.astype(np.int64)))
    expected = _ref_radius(w)
    assert np.array_equal(bits(got), bits(expected))
    assert float(got[0]) == pytest.approx(np.sqrt(2 * 24 * np.log(2)), rel=1e-6) and float(got[-1]) == 0.0


def test_angle_matches_the_definition_across_quadrant_edges():
    edges = [0, 1 << 29, 1 << 30, 3 << 29, 1 << 31, 5 << 29, 3 << 30, 7 << 29]
    words = np.unique(
        np.concatenate(
            [(np.uint64(e) + np.arange(-4096, 4096, dtype=np.int64).astype(np.uint64)) for e in edges]
        )
        & np.uint64(0xFFFFFFFF)
    ).astype(np.uint32)
    words = np.concatenate([words, np.random.default_rng(0).integers(0, 1 << 32, 1 << 20, dtype=np.uint32)])
    c, s = portable._cos_sin(torch.from_numpy(words.astype(np.int64)))
    rc, rs = _ref_cos_sin(words)
    assert np.array_equal(bits(c), bits(rc)) and np.array_equal(bits(s), bits(rs))


def test_sqrt_is_correctly_rounded():
    """Against float64 sqrt rounded to float32 (exact: float32 square roots are never near a tie)."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 34, 1 << 20), rng.uniform(0.5, 1, 1 << 20), [0.0, 0.5, 1.0, 2.0]])
    x = x.astype(np.float32)
    got = portable._sqrt(torch.from_numpy(x))
    assert np.array_equal(bits(got), bits(np.sqrt(x.astype(np.float64)).astype(np.float32)))


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("keep_z", [False, True])
def test_portable_perturber_gives_the_native_weights(distribution, keep_z):
    if not HAS_NATIVE:
        pytest.skip("no C compiler for the native kernels")
    digests = []
    for backend in ("native", "portable"):
        model = tiny_llama()
        pert = Perturber(list(model.parameters()), distribution, keep_z, chunk_size=1000, backend=backend)
        assert pert.definition.family == "philox"
        with torch.no_grad():
            pert.add(8, 1e-3)
            pert.add(8, -2e-3)
            pert.add(8, -0.01, decay=1e-3, restore=1e-3)
            pert.add(9, 0.37, decay=0.25)
        digests.append((digest(pert.z(5)), digest(model.parameters())))
        pert.close()
    assert digests[0] == digests[1]


def test_auto_without_a_compiler_uses_portable_with_a_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDKSEED_CACHE", str(tmp_path))  # no cached library
    monkeypatch.setattr(native, "find_compiler", lambda: None)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(definition, "_notified", False)
    pert = Perturber([torch.zeros(100)], chunk_size=64)
    assert pert.backend == "portable" and pert.definition.family == "philox"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "portable" in err and "gcc" in err
    assert (
        definition.choose_backend("auto", torch.device("cuda")) == "portable"
    )  # a CPU build of torch: no kernel


def test_recorded_definitions_choose_the_backend_or_refuse():
    legacy = definition.ZDefinition("torch.Generator/cuda", torch.__version__, 1 << 20, "gaussian")
    with pytest.raises(ValueError, match="only on a cuda device.*this one is cpu"):
        definition.choose_backend("auto", torch.device("cpu"), legacy)
    philox = definition.definition_of("portable", "cuda", 1 << 20, "gaussian")
    assert definition.choose_backend("torch", torch.device("cpu"), philox) in ("native", "portable")
    with pytest.raises(ValueError, match="rademacher.*gaussian|gaussian.*rademacher"):
        definition.check_same(philox, definition.definition_of("native", "cpu", 1 << 20, "rademacher"), "x")
    with pytest.raises(ValueError, match="one of auto, native, cuda, portable, torch"):
        Perturber([torch.zeros(4)], backend="numpy")


@pytest.mark.slow
@needs_native
def test_portable_equals_native_on_every_parameter_of_smollm2():
    from kit.models import load_model

    params = list(load_model("smollm2-135m").parameters())
    for distribution in ("gaussian", "rademacher"):
        a = Perturber(params, distribution, backend="native")
        b = Perturber(params, distribution, backend="portable")
        for i, (za, zb) in enumerate(zip(a.z(2024), b.z(2024), strict=True)):
            assert np.array_equal(bits(za), bits(zb)), (distribution, i)
        a.close()
        b.close()


@pytest.mark.slow
@needs_native
def test_a_run_on_portable_ends_with_the_native_weights(tiny_model_dir, data_root, tmp_path):
    from kit.cli import main

    digests = {}
    for backend in ("native", "portable"):
        run = tmp_path / backend
        main([*fed_args(tiny_model_dir, data_root, run, rounds=2), "--model.zo_backend", backend])
        summary = json.loads((run / "summary.json").read_text())
        assert summary["z"]["family"] == "philox"
        digests[backend] = summary["global_weights_sha256"]
    assert digests["native"] == digests["portable"]


# -- on a CUDA device -----------------------------------------------------------------------------
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@gpu
@needs_cuda
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_portable_on_cuda_matches_the_definition(distribution):
    for key in KEYS:
        for n in [*SIZES, 1 << 20]:
            got = portable.z_chunk(n, key, distribution, "cuda")
            assert np.array_equal(bits(got), bits(ref_z(n, key, distribution))), (key, n)


@gpu
@needs_cuda
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_cuda_kernel_matches_the_definition(distribution):
    from kit.zo.cuda import load

    kernel = load(torch.device("cuda"))
    for key in KEYS:
        for n in [*SIZES, 1 << 20]:
            out = torch.empty(n, dtype=torch.float32, device="cuda")
            kernel.fill(out, key, distribution)
            assert np.array_equal(bits(out), bits(ref_z(n, key, distribution))), (key, n)


@gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["portable", "cuda"])
def test_cuda_perturber_gives_the_cpu_weights(backend):
    cpu, gpu_model = tiny_llama(), tiny_llama().cuda()
    for model, name in ((cpu, "portable"), (gpu_model, backend)):
        pert = Perturber(list(model.parameters()), chunk_size=1000, backend=name)
        with torch.no_grad():
            pert.add(8, 1e-3)
            pert.add(8, -2e-3)
            pert.add(8, -0.01, decay=1e-3, restore=1e-3)
        pert.close()
    assert digest(cpu.parameters()) == digest(gpu_model.parameters())
