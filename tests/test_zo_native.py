"""The native z backend (kit/zo/native): exact definition, determinism, statistics, fused kernels.

The definition of z is re-implemented below in numpy (Philox-4x32-10 + the float32 Box-Muller of
zkernel.c, operation for operation), and every instruction-set variant of the library, plus builds
at -O0 and without vectorisation, must match it bit for bit.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from kit.zo import native
from kit.zo.perturb import Perturber
from kit.zo.seeding import mix

from .conftest import REPO, tiny_llama
from .zo_reference import f32, ref_philox, ref_z

try:
    ZK = native.load()
except native.NativeUnavailable as exc:  # no C compiler: the torch backend still works
    pytest.skip(f"native z backend unavailable: {exc}", allow_module_level=True)

ISAS = ZK.available


# -- helpers --------------------------------------------------------------------------------------
def draw(n: int, key: int, distribution: str = "gaussian", kernel: native.ZKernel = ZK) -> np.ndarray:
    out = np.empty(n, dtype=f32)
    kernel.fill(out.ctypes.data, n, key, distribution)
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


KEYS = [0, 1, 12345, mix(7, 3, 2), (1 << 63) - 1, (1 << 64) - 1]
SIZES = [1, 15, 63, 64, 65, 1000, 4099]


# -- the definition -------------------------------------------------------------------------------
# Random123's kat_vectors for philox4x32_10: (counter, key, output)
PHILOX_KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


def test_philox_known_answers():
    for ctr, key, expected in PHILOX_KAT:
        assert ZK.philox4x32(ctr, key) == expected
    # the numpy reference too (its counter words 2, 3 are (domain, 0))
    ctr, key, expected = PHILOX_KAT[0]
    assert [int(w[0]) for w in ref_philox(np.array([0]), 0, 0)] == expected


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_every_variant_matches_the_numpy_definition(isa, distribution):
    kernel = native.load(isa)
    for key in KEYS:
        for n in SIZES:
            assert same_bits(draw(n, key, distribution, kernel), ref_z(n, key, distribution)), (isa, key, n)


def test_independent_builds_agree(tmp_path):
    """-O0 and an unvectorised portable build give the bits of the shipped -O3 build (and of each other)."""
    reference = {(k, d): draw(10007, k, d) for k in KEYS[:3] for d in ("gaussian", "rademacher")}
    for name, flags in {"O0": ["-O0"], "portable": ["-O1", "-fno-tree-vectorize", "-DZK_PORTABLE"]}.items():
        path = native.build(tmp_path / f"zk-{name}.so", extra_flags=flags)
        kernel = native.ZKernel(path)
        for isa in kernel.available:
            variant = native.ZKernel(path, isa)
            for (key, dist), expected in reference.items():
                assert same_bits(draw(10007, key, dist, variant), expected), (name, isa, key, dist)


def test_float32_box_muller_is_accurate():
    """Against float64 Box-Muller of the same words (same u and angle grid): a few ulps."""
    n, key = 1 << 18, 2024
    blocks = n // 64
    w = [x.reshape(blocks, 16).astype(np.int64) for x in ref_philox(np.arange(blocks * 16), 0, key)]
    z = draw(n, key).reshape(blocks, 4, 16).astype(np.float64)
    for q, (wr, wa) in enumerate([(w[0], w[1]), (w[2], w[3])]):
        r = np.sqrt(-2 * np.log(((wr >> 8) + 1) / 2.0**24))
        angle = (((wa + 2**29) % 2**32 >> 6 << 6) - 2**29) * (2 * np.pi / 2.0**32)
        for got, exact in ((z[:, 2 * q], r * np.cos(angle)), (z[:, 2 * q + 1], r * np.sin(angle))):
            assert np.max(np.abs(got - exact) / np.maximum(np.abs(exact), 1e-3)) < 5e-7


def test_unsuffixed_c_entry_points_give_the_same_bits():
    lib, p0 = ZK.lib, np.random.default_rng(1).standard_normal(777).astype(f32)
    fill = lib.zk_gauss_fill
    fill.argtypes, fill.restype = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64], None
    out = np.empty(777, dtype=f32)
    fill(out.ctypes.data, 777, 5)
    assert same_bits(out, draw(777, 5))
    axpy = lib.zk_rade_axpy
    axpy.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_float, ctypes.c_float]
    axpy.restype = None
    p = p0.copy()
    axpy(p.ctypes.data, 777, 5, 0.5, 0.75)
    assert same_bits(p, f32(0.75) * p0 + f32(0.5) * draw(777, 5, "rademacher"))


def test_a_chunk_is_a_prefix_of_a_longer_one():
    long = draw(5000, 99)
    for n in (1, 64, 100, 4097):
        assert same_bits(draw(n, 99), long[:n])


# -- determinism through the Perturber ------------------------------------------------------------
def test_same_seed_same_bits_across_calls_and_threads(tiny_model):
    params = list(tiny_model.parameters())
    a = Perturber(params, chunk_size=1000, backend="native").z(1234)
    b = Perturber(params, chunk_size=1000, backend="native", num_threads=2).z(1234)
    c = Perturber(params, chunk_size=1000, backend="native").z(1235)
    assert _digest(a) == _digest(b) != _digest(c)
    # the in-place pass, on 1 worker and on 2
    results = []
    for workers in (1, 2):
        model = tiny_llama()
        pert = Perturber(list(model.parameters()), chunk_size=1000, backend="native", num_threads=workers)
        with torch.no_grad():
            pert.add(1234, 0.5)
            pert.add(1234, -0.25, decay=0.1, restore=0.5)
        results.append(_digest(p.detach() for p in model.parameters()))
        pert.close()
    assert results[0] == results[1]


SHAPES = [(300, 7), (2500,), (13, 11, 17)]


def test_same_bits_in_a_fresh_process():
    code = (
        "import hashlib, torch; from kit.zo.perturb import Perturber;"
        f"params = [torch.zeros(s) for s in {SHAPES!r}];"
        "z = Perturber(params, chunk_size=1000, backend='native').z(99);"
        "h = hashlib.sha256(); [h.update(t.numpy().tobytes()) for t in z]; print(h.hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    here = Perturber([torch.zeros(s) for s in SHAPES], chunk_size=1000, backend="native").z(99)
    assert out.stdout.strip() == _digest(here)


def test_perturber_chunks_use_mix_keys(tiny_model):
    params = list(tiny_model.parameters())
    pert = Perturber(params, chunk_size=1000, backend="native")
    z = pert.z(5)
    for i, c, start, size, _ in pert.units:
        assert same_bits(z[i].view(-1)[start : start + size].numpy(), draw(size, mix(5, i, c)))


def test_pool_batches_cover_every_unit_once(tiny_model):
    pert = Perturber(list(tiny_model.parameters()), chunk_size=1000, backend="native", num_threads=2)
    assert sorted(u for batch in pert._batches for u in batch) == sorted(pert.units)
    sizes = [sum(u[3] for u in batch) for batch in pert._batches]
    assert len(sizes) <= 8 and max(sizes) - min(sizes) <= 1000  # balanced to within one chunk
    pert.close()


def test_native_is_the_default_on_cpu_and_legacy_torch_is_another_z(tiny_model):
    params = list(tiny_model.parameters())
    assert Perturber(params, chunk_size=1000).backend == "native"
    pert = Perturber(params, chunk_size=1000, backend="torch")
    assert pert.definition.family == "torch.Generator/cpu"
    z = pert.z(3)
    i, c, start, size, _ = pert.units[0]
    g = torch.Generator().manual_seed(mix(3, i, c))
    assert torch.equal(z[i].view(-1)[start : start + size], torch.empty(size).normal_(generator=g))
    native_z = Perturber(params, chunk_size=1000, backend="native").z(3)
    assert not torch.equal(z[i], native_z[i])


def test_native_needs_float32_cpu_parameters():
    with pytest.raises(ValueError, match="float32"):
        Perturber([torch.zeros(10, dtype=torch.float64)], backend="native")
    with pytest.raises(ValueError, match="backend"):
        Perturber([torch.zeros(10)], backend="numpy")


# -- statistics -----------------------------------------------------------------------------------
def test_gaussian_moments_and_tails():
    n = 1 << 22
    z = np.concatenate([draw(1 << 20, mix(11, 0, c)) for c in range(4)]).astype(np.float64)
    sd = 1 / math.sqrt(n)
    assert abs(z.mean()) < 5 * sd
    assert abs(z.var() - 1) < 5 * math.sqrt(2) * sd
    assert abs((z**3).mean()) < 5 * math.sqrt(15) * sd
    assert abs((z**4).mean() / z.var() ** 2 - 3) < 5 * math.sqrt(96) * sd
    for t in (0.5, 1.0, 2.0, 3.0, 4.0):
        p = math.erfc(t / math.sqrt(2))
        assert abs((np.abs(z) > t).mean() - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-6, t
    # Kolmogorov-Smirnov distance to the normal CDF on a subsample
    s = np.sort(z[:200_000])
    cdf = 0.5 * (1 + np.vectorize(math.erf)(s / math.sqrt(2)))
    ks = np.max(np.abs(cdf - np.arange(1, s.size + 1) / s.size))
    assert ks < 1.95 / math.sqrt(s.size)  # 0.1% level
    assert np.abs(z).max() <= math.sqrt(2 * 24 * math.log(2)) + 1e-5  # u >= 2^-24


def test_rademacher_is_balanced_signs():
    z = draw(1 << 20, 5, "rademacher")
    assert set(np.unique(z).tolist()) == {-1.0, 1.0}
    assert abs(z.mean()) < 5 / math.sqrt(z.size)


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_no_correlation_between_keys_chunks_or_lags(distribution):
    n = 1 << 20
    bound = 5 / math.sqrt(n)
    base = draw(n, mix(3, 0, 0), distribution).astype(np.float64)
    others = {
        "next chunk": draw(n, mix(3, 0, 1), distribution),
        "next parameter": draw(n, mix(3, 1, 0), distribution),
        "next seed": draw(n, mix(4, 0, 0), distribution),
        "adjacent raw key": draw(n, mix(3, 0, 0) + 1, distribution),
        "key high word": draw(n, mix(3, 0, 0) ^ (1 << 32), distribution),
    }
    assert draw(n, mix(3, 0, 0), distribution).tobytes() == base.astype(f32).tobytes()
    for name, other in others.items():
        assert not np.array_equal(other, base), name
        assert abs(np.corrcoef(base, other)[0, 1]) < bound, name
    for lag in (1, 2, 16, 32, 48, 64, 1024):  # 16: cos/sin of one pair share a radius (uncorrelated)
        assert abs(np.corrcoef(base[:-lag], base[lag:])[0, 1]) < bound, lag
    if distribution == "gaussian":  # squares: the shared radius must not correlate |z| either
        sq = base**2
        for lag in (16, 32, 48):
            assert abs(np.corrcoef(sq[:-lag], sq[lag:])[0, 1]) < bound, lag


# -- the fused kernels ----------------------------------------------------------------------------
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_fused_axpy_is_fill_then_float32_axpy(isa, distribution):
    kernel = native.load(isa)
    rng = np.random.default_rng(0)
    for n, alpha, keep in [(1000, 1e-3, 1.0), (4099, -2.5e-3, 1 - 1e-4), (64, 0.3, 0.9), (7, -1.0, 1.0)]:
        key = mix(17, n, 0)
        p0 = rng.standard_normal(n).astype(f32)
        z = draw(n, key, distribution, kernel)
        expected = f32(keep) * p0 + f32(alpha) * z  # float32: each product and the sum rounded once
        p = p0.copy()
        kernel.axpy(p.ctypes.data, n, key, alpha, keep, distribution)
        assert same_bits(p, expected)
        p, zout = p0.copy(), np.empty(n, dtype=f32)
        kernel.axpy_fill(p.ctypes.data, zout.ctypes.data, n, key, alpha, keep, distribution)
        assert same_bits(p, expected) and same_bits(zout, z)
        p = p0.copy()
        kernel.axpy_z(p.ctypes.data, z.ctypes.data, n, alpha, keep)
        assert same_bits(p, expected)


@pytest.mark.parametrize("keep_z", [False, True])
def test_plus_minus_plus_restores_the_weights(keep_z):
    model = tiny_llama()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    pert = Perturber(params, chunk_size=1000, backend="native", keep_z=keep_z, num_threads=2)
    eps = 1e-3
    with torch.no_grad():
        pert.add(42, eps)
        pert.add(42, -2 * eps)
        pert.add(42, eps)
    z = pert.z(42)
    for p, b, zz in zip(params, before, z, strict=True):
        tol = 4 * torch.finfo(torch.float32).eps * (b.abs() + eps * zz.abs()) + 1e-12
        assert torch.all((p.detach() - b).abs() <= tol)
    pert.close()


def test_kept_and_regenerated_z_give_the_same_weights():
    digests = []
    for keep_z in (False, True):
        model = tiny_llama()
        pert = Perturber(list(model.parameters()), chunk_size=1000, backend="native", keep_z=keep_z)
        with torch.no_grad():
            pert.add(8, 1e-3)
            pert.add(8, -2e-3)
            pert.add(8, -0.01, decay=1e-3, restore=1e-3)
        digests.append(_digest(p.detach() for p in model.parameters()))
    assert digests[0] == digests[1]


def test_add_matches_alpha_times_z():
    model = tiny_llama()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    pert = Perturber(params, chunk_size=1000, backend="native")
    with torch.no_grad():
        pert.add(5, 0.25)
    for p, b, z in zip(params, before, pert.z(5), strict=True):
        assert torch.equal(p.detach(), b + 0.25 * z)  # 0.25 z is exact: one rounding either way


# -- building -------------------------------------------------------------------------------------
def test_build_is_cached_atomic_and_concurrent(tmp_path):
    dest = tmp_path / "zk.so"
    errors = []

    def job():
        try:
            native.build(dest, extra_flags=["-O0"], force=True)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(x.name for x in tmp_path.iterdir()) == ["zk.so"]  # no temp files left behind
    mtime = dest.stat().st_mtime_ns
    assert native.build(dest) == dest and dest.stat().st_mtime_ns == mtime  # cached: not rebuilt
    assert same_bits(draw(999, 3, kernel=native.ZKernel(dest)), draw(999, 3))
    assert native.library_path().name.startswith("zkernel-") and native.library_path().parent.name == "native"


def test_missing_compiler_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "find_compiler", lambda: None)
    with pytest.raises(native.NativeUnavailable, match="install gcc or use --model.zo_backend portable"):
        native.build(tmp_path / "zk.so")
