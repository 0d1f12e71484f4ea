"""The cuda z backend's Triton kernel, proven without a GPU: run by Triton's interpreter on CPU tensors
it gives native's bits (z and the fused axpy); compiled ahead of time for sm_80 and sm_90 through the
launcher's own argument binding, its PTX has none of the instructions that would change the bits;
`auto` uses it on CUDA only after its start-up self-test, and falls back to portable with one line
when a known answer does not match. Mutated kernels (a specialised key, `-x`, a plain `/`, a wrong
layout) make these checks fail. Triton is a test dependency (the `dev` extra), not a runtime one.
"""

from __future__ import annotations

import sys

import pytest
import torch

if sys.platform != "linux":  # Triton (the dev extra's pin) ships Linux wheels only
    pytest.skip("Triton runs on Linux only", allow_module_level=True)

from kit.zo import cuda, definition
from kit.zo.native import load as load_native
from kit.zo.perturb import Perturber
from scripts.zo_known_answers import CASES, PARAM_CASES, native_answer, native_param_answer
from tests import triton_aot

TOP = (1 << 64) - 1
# keys with a 32-bit half equal to 0 or 1, halves >= 2^31, and (13045, 96227, 59453) gaussian z
# with +0 and -0 among its first 700 elements
KEYS = (0, 1, 1 << 32, (1 << 32) | 1, TOP, (1 << 63) - 1, 13045, 96227, 59453)
SIZES = (1, 15, 64, 65, 511, 512, 513, 700, 1025)  # tails, blocks of 64, the 512-element programs


@pytest.fixture
def interpreted(monkeypatch):
    """The kernel under Triton's interpreter (CPU tensors), with a fresh self-test record."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(cuda, "_results", {})
    monkeypatch.setattr(cuda, "_announced", set())
    return cuda.load(torch.device("cpu"))


def _native(n: int, key: int, dist: str) -> torch.Tensor:
    out = torch.empty(n, dtype=torch.float32)
    load_native().fill(out.data_ptr(), n, key, dist)
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def test_known_answers_are_natives():
    assert [row[:6] for row in cuda.KNOWN_ANSWERS] == list(CASES)
    for row in cuda.KNOWN_ANSWERS:
        assert native_answer(*row[:6]) == row[6], row
    assert [row[:8] for row in cuda.KNOWN_PARAM_ANSWERS] == list(PARAM_CASES)
    for row in cuda.KNOWN_PARAM_ANSWERS:
        assert native_param_answer(*row[:8]) == row[8], row


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_interpreted_kernel_fills_natives_bits(interpreted, dist):
    for i, key in enumerate(KEYS):
        n = SIZES[i % len(SIZES)]
        out = torch.full((n + 70,), 7.0)  # the kernel must not write past n
        interpreted.fill(out[:n], key, dist)
        want = _native(n, key, dist)
        assert torch.equal(_bits(out[:n]), _bits(want)), (key, n)
        assert (out[n:] == 7.0).all(), (key, n)
        if dist == "gaussian" and key in (13045, 96227):  # the signed zeros are there and kept
            assert (want == 0).any() and torch.equal(torch.signbit(out[:n]), torch.signbit(want))


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_interpreted_fused_axpy_gives_natives_weights(interpreted, dist):
    zk = load_native()
    for key, n, scale, keep in ((1, 1100, 1e-3, 0.999), (1 << 32, 513, 0.0, 1.0), (TOP, 64, -2e-3, 0.98)):
        start = cuda.start_weights(n)
        p, p_native, z = start.clone(), start.clone(), torch.full((n,), 7.0)
        interpreted.axpy_fill(p, z, key, scale, keep, dist)
        zk.axpy(p_native.data_ptr(), n, key, scale, keep, dist)
        assert torch.equal(_bits(p), _bits(p_native)) and torch.equal(_bits(z), _bits(_native(n, key, dist)))
        p = start.clone()
        interpreted.axpy(p, key, scale, keep, dist)
        assert torch.equal(_bits(p), _bits(p_native)), (key, n)


def test_interpreted_cuda_perturber_gives_the_native_weights(interpreted):
    """A ZO step on the cuda backend (fused passes, decay on matrices, keep_z) = the native one."""
    # chunks: of 512 floats (a multiple of the kernel's programs) and of 100 (not one of 64)
    for chunk in (512, 100):
        results = []
        for backend in ("native", "cuda"):
            for keep_z in (False, True):
                gen = torch.Generator().manual_seed(0)
                params = [torch.randn(3, 300, generator=gen), torch.randn(40, generator=gen)]
                pert = Perturber(params, chunk_size=chunk, backend=backend, keep_z=keep_z, num_threads=1)
                zs = [_bits(z) for z in pert.z(11)]
                pert.add(11, 1e-3)
                pert.add(11, -2e-3)
                pert.add(11, -5e-4, decay=0.01, restore=1e-3)
                results.append((backend, keep_z, zs + [_bits(p).clone() for p in params]))
        for backend, keep_z, bits in results[1:]:
            same = all(torch.equal(a, b) for a, b in zip(results[0][2], bits, strict=True))
            assert same, (chunk, backend, keep_z)


def test_self_test_passes_and_auto_picks_the_kernel(interpreted, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build of torch, as far as `auto` sees
    assert definition.choose_backend("auto", torch.device("cuda")) == "cuda"
    zdef = definition.definition_of("cuda", "cuda", 1 << 20, "gaussian")
    assert zdef.backend == "cuda" and "passed (19 known answers, " in zdef.cuda_self_test
    assert zdef.to_dict()["cuda_self_test"] == zdef.cuda_self_test  # what summary.json gets


def test_a_wrong_known_answer_makes_auto_fall_back_with_one_line(interpreted, monkeypatch, capsys):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    answers = list(cuda.KNOWN_ANSWERS)
    answers[6] = (*answers[6][:6], "0" * 16)  # the signed-zero case, corrupted
    monkeypatch.setattr(cuda, "KNOWN_ANSWERS", tuple(answers))
    assert definition.choose_backend("auto", torch.device("cuda")) == "portable"
    assert definition.choose_backend("auto", torch.device("cuda")) == "portable"  # tested once
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "self-test" in lines[0] and "key=13045" in lines[0] and "portable" in lines[0]
    zdef = definition.definition_of("portable", "cuda", 1 << 20, "gaussian")
    assert zdef.backend == "portable" and "failed: gaussian fill key=13045" in zdef.cuda_self_test
    # the record is not part of the definition: the run's z is the same philox z
    assert zdef == definition.definition_of("cuda", "cuda", 1 << 20, "gaussian")
    # asked for by name, a kernel that failed its self-test is refused with the fix
    with pytest.raises(ValueError, match="failed its self-test.*key=13045.*zo_backend portable"):
        definition.choose_backend("cuda", torch.device("cuda"))
    assert capsys.readouterr().err == ""


def test_a_kernel_that_cannot_load_falls_back_with_one_line(monkeypatch, capsys):
    import kit.zo

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(cuda, "_results", {})
    monkeypatch.setattr(cuda, "_announced", set())
    monkeypatch.delattr(kit.zo, "cuda_kernel", raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setitem(sys.modules, "triton", None)  # no Triton: import fails
    monkeypatch.delitem(sys.modules, "kit.zo.cuda_kernel", raising=False)
    assert definition.choose_backend("auto", torch.device("cuda")) == "portable"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs Triton" in lines[0]


# -- ahead-of-time compilation for the GPUs users have ---------------------------------------------
@pytest.fixture(autouse=True)
def _compiled_unless_asked(monkeypatch):
    """Kernels are compiled for GPUs unless a test asks for the interpreter."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize(
    "arch, dist, per_chunk",
    [(80, "gaussian", True), (80, "rademacher", True), (90, "gaussian", True), (90, "rademacher", True)]
    + [(90, "gaussian", False)],  # the one-key form (known answers)
)
def test_compiled_kernel_has_no_rounding_hazards(arch, dist, per_chunk):
    module = triton_aot.load_module()
    # both key halves equal 1 and n = 1: the arguments Triton's launcher would specialise
    compiled, signature, constexprs = triton_aot.compile_for(
        module, arch, (1 << 32) | 1, 1, 2, dist == "rademacher", per_chunk
    )
    assert signature["key_lo"] == signature["key_hi"] == "u32"
    assert not {"key_lo", "key_hi", "n", "chunk_size", "chunk_counters"} & set(constexprs)
    ptx = compiled.asm["ptx"]
    assert f".target sm_{arch}" in ptx and compiled.asm["cubin"]  # assembled by ptxas for the card
    assert triton_aot.hazards(ptx) == []
    assert "st.global" in ptx and "ld.global" in ptx  # the fused axpy + z store
    if dist == "gaussian":
        assert "div.rn.f32" in ptx and "sqrt.rn.f32" in ptx and "mul.hi.u32" in ptx


MUTANTS = {
    "specialised keys": [
        (
            '@triton.jit(do_not_specialize=("n", "chunk_size", "chunk_counters", "key_lo", "key_hi"))',
            "@triton.jit",
        ),
        ("key_lo: tl.uint32", "key_lo"),
        ("key_hi: tl.uint32", "key_hi"),
    ],
    "minus negation": [
        (
            "return (x.to(tl.uint32, bitcast=True) ^ sign).to(tl.float32, bitcast=True)",
            "return tl.where(sign != 0, -x, x)",
        )
    ],
    "plain division": [("tl.math.div_rn(m - 1.0, m + 1.0)", "(m - 1.0) / (m + 1.0)")],
}


def _mutant(name: str):
    source = triton_aot.KERNEL_SOURCE.read_text()
    for old, new in MUTANTS[name]:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    return triton_aot.load_module(source, "zkernel_" + name.replace(" ", "_"))


@pytest.mark.parametrize("name", list(MUTANTS))
def test_ahead_of_time_check_catches_the_old_kernels_faults(name):
    module = _mutant(name)
    try:
        compiled, _, _ = triton_aot.compile_for(module, 90, (1 << 32) | 1, 4096, 2, False)
    except Exception as exc:  # the old kernel: `int` (the specialised key 1) has no `.to`
        assert name == "specialised keys" and type(exc).__name__ == "CompilationError", exc
        return
    assert triton_aot.hazards(compiled.asm["ptx"]), name


def test_interpreter_check_catches_a_wrong_layout(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    source = triton_aot.KERNEL_SOURCE.read_text()
    old = "_apply(p_ptr, z_ptr, start, e + 16, size, z1, scale, keep, MODE)"
    assert source.count(old) == 1
    module = triton_aot.load_module(source.replace(old, old.replace("e + 16", "e + 15")), "zkernel_layout")
    out = torch.empty(64)
    cuda.CudaZ(module).fill(out, 5, "gaussian")
    assert not torch.equal(_bits(out), _bits(_native(64, 5, "gaussian")))
