"""The `cuda` z backend: z's definition as one fused Triton kernel on NVIDIA GPUs, imported only on use.

    from kit.zo.cuda import load, checked
    kernel = load(torch.device("cuda"))
    kernel.fill(out, key, "gaussian")                 # out = z of chunk key
    kernel.axpy(p, key, scale, keep, "gaussian")      # p = keep * p + scale * z, z never stored
    kernel.axpy_fill(p, z, key, scale, keep)          # both, in the same pass (keep_z)
    checked(torch.device("cuda")).passed              # the start-up self-test on this device

Tensors are contiguous float32 on the GPU, or on the CPU under Triton's interpreter
(TRITON_INTERPRET=1, how the tests run the kernel without a GPU). `auto` uses this backend on a
GPU only after `checked` passed there: known answers of z computed by the native kernels
(`KNOWN_ANSWERS`) compared with the kernel's output on the actual device; on a mismatch or a build
failure one line says so and `auto` uses `portable` (the same z, slower).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kit.zo.seeding import MASK64, splitmix64

# (distribution, key, n, mode, scale, keep, sha256(float32 bytes)[:16]) from the native kernels
# (scripts/zo_known_answers.py). Keys: halves 0 and 1 (Triton specialises an argument equal to 1),
# halves >= 2^31, keys whose z has +0 and -0 (r = 0) early; sizes: tails and program boundaries.
# axpy rows start from `start_weights(n)` (signed zeros included) and give the weights after.
KNOWN_ANSWERS: tuple[tuple[str, int, int, str, float, float, str], ...] = (
    ("gaussian", 0, 1, "fill", 0.0, 1.0, "164286422e89ac72"),
    ("gaussian", 1, 513, "fill", 0.0, 1.0, "47f83c50321e320d"),
    ("gaussian", 4294967296, 63, "fill", 0.0, 1.0, "cedafb1be172cea0"),
    ("gaussian", 4294967297, 1024, "fill", 0.0, 1.0, "07e214b7b44baa1f"),
    ("gaussian", 18446744073709551615, 1000, "fill", 0.0, 1.0, "61c07d4b336436fd"),
    ("gaussian", 9223372036854775807, 4099, "fill", 0.0, 1.0, "7522b5eed42ca844"),
    ("gaussian", 13045, 180, "fill", 0.0, 1.0, "455e28e2f88c107b"),
    ("gaussian", 96227, 60, "fill", 0.0, 1.0, "beb13bcde1c374a4"),
    ("gaussian", 59453, 700, "fill", 0.0, 1.0, "0ae7a12f11bb2496"),
    ("rademacher", 1, 65, "fill", 0.0, 1.0, "6cad61cd97720b11"),
    ("rademacher", 4294967296, 512, "fill", 0.0, 1.0, "766486291bd715e7"),
    ("rademacher", 18446744073709551615, 777, "fill", 0.0, 1.0, "292672d612cfdbef"),
    ("gaussian", 1, 1100, "axpy", 0.001, 0.999, "5b98a1185d47263f"),
    ("gaussian", 4294967296, 640, "axpy", -0.002, 1.0, "7ab6f79ee4fc45f5"),
    ("gaussian", 13045, 180, "axpy", 0.0, 1.0, "49e76fcef5520820"),
    ("rademacher", 4294967297, 300, "axpy", 0.0005, 0.99, "52d7715034231435"),
)
# whole parameters as Perturber draws them: (distribution, seed, index, numel, chunk_size, mode,
# scale, keep, digest); chunk c under mix(seed, index, c)
KNOWN_PARAM_ANSWERS: tuple[tuple[str, int, int, int, int, str, float, float, str], ...] = (
    ("gaussian", 5, 0, 1100, 512, "fill", 0.0, 1.0, "596d72914457c329"),
    ("gaussian", 9223372036854775815, 3, 700, 100, "axpy", 0.001, 0.99, "5540e7ebccafd3ff"),
    ("rademacher", 1, 1, 300, 64, "fill", 0.0, 1.0, "90cb025ec9be3e5b"),
)


def start_weights(n: int) -> torch.Tensor:
    """The weights the axpy known answers start from: small values with +0 and -0 among them."""
    w = (np.arange(n, dtype=np.float32) - np.float32(n // 2)) * np.float32(1 / 256)
    w[::7] = np.float32(-0.0)
    w[3::11] = np.float32(0.0)
    return torch.from_numpy(w)


def digest(t: torch.Tensor) -> str:
    """sha256 of a float32 tensor's bytes, first 16 hex digits."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _f32(x: float) -> float:
    return float(np.float32(x))


class CudaZ:
    """The fused kernel for float32 GPU tensors (the same bits as the native and portable backends)."""

    def __init__(self, module) -> None:
        self._m = module
        self._kernel = module.z_kernel

    def arguments(self, p, z, h: int, per_chunk: bool, chunk_size: int, scale, keep, mode, distribution):
        """(grid, args, kwargs) of the kernel's launch for these tensors (only their dtype and
        alignment matter to the compiler; tests/triton_aot.py compiles with exactly these)."""
        n = p.numel()
        chunk_size = min(chunk_size, n)
        chunk_counters = 16 * -(-chunk_size // 64)
        lanes = -(-n // chunk_size) * chunk_counters
        h &= MASK64
        args = (p, z, n, chunk_size, chunk_counters, h & 0xFFFFFFFF, h >> 32, _f32(scale), _f32(keep))
        kwargs = {
            "MODE": mode,
            "RADEMACHER": distribution == "rademacher",
            "PER_CHUNK_KEYS": per_chunk,
            "COUNTERS": self._m.COUNTERS,
            "num_warps": self._m.NUM_WARPS,
            "enable_fp_fusion": False,  # no FMA contraction: each product and sum rounded on its own
        }
        return (-(-lanes // self._m.COUNTERS),), args, kwargs

    def _launch(self, p, z, h: int, per_chunk: bool, chunk_size: int, scale, keep, mode, distribution):
        for t in (p, z):
            if t.dtype != torch.float32 or not t.is_contiguous():
                raise ValueError("the cuda z backend works on contiguous float32 tensors")
            if t.device.type != "cuda" and not interpreting():
                raise ValueError(f"the cuda z backend works on CUDA tensors, not on {t.device}")
        if distribution not in ("gaussian", "rademacher"):
            raise ValueError(f"distribution {distribution!r} must be 'gaussian' or 'rademacher'")
        if p.numel() == 0:
            return
        grid, args, kwargs = self.arguments(p, z, h, per_chunk, chunk_size, scale, keep, mode, distribution)
        with torch.cuda.device(p.device) if p.device.type == "cuda" else contextlib.nullcontext():
            self._kernel[grid](*args, **kwargs)

    # -- one chunk under a given key (the known answers, tests) --
    def fill(self, out: torch.Tensor, key: int, distribution: str = "gaussian") -> None:
        """out = z of the chunk key (its first out.numel() elements)."""
        self._launch(out, out, key, False, out.numel(), 0.0, 1.0, self._m.MODE_FILL, distribution)

    def axpy(self, p: torch.Tensor, key: int, scale: float, keep: float = 1.0, distribution="gaussian"):
        """p = keep * p + scale * z (float32; each product and the sum rounded once, as native)."""
        self._launch(p, p, key, False, p.numel(), scale, keep, self._m.MODE_AXPY, distribution)

    def axpy_fill(self, p, z, key: int, scale: float, keep: float = 1.0, distribution="gaussian"):
        """z = z of the chunk key and p = keep * p + scale * z, in one pass (p and z of equal size)."""
        _same_size(p, z)
        self._launch(p, z, key, False, p.numel(), scale, keep, self._m.MODE_AXPY_FILL, distribution)

    # -- a whole parameter: chunk c of parameter i under mix(seed, i, c), one launch --
    def fill_param(self, out, seed: int, index: int, chunk_size: int, distribution="gaussian") -> None:
        """out (parameter `index`, flattened) = its z(seed), chunk by chunk as `Perturber.z`."""
        h = param_prefix(seed, index)
        self._launch(out, out, h, True, chunk_size, 0.0, 1.0, self._m.MODE_FILL, distribution)

    def axpy_param(
        self,
        p,
        seed: int,
        index: int,
        chunk_size: int,
        scale: float,
        keep=1.0,
        distribution="gaussian",
        z=None,
    ) -> None:
        """p = keep * p + scale * z(seed) over parameter `index` (flattened); with `z`, also z = z(seed)."""
        h = param_prefix(seed, index)
        if z is None:
            self._launch(p, p, h, True, chunk_size, scale, keep, self._m.MODE_AXPY, distribution)
        else:
            _same_size(p, z)
            self._launch(p, z, h, True, chunk_size, scale, keep, self._m.MODE_AXPY_FILL, distribution)


def param_prefix(seed: int, index: int) -> int:
    """h with mix(seed, index, c) = splitmix64(h ^ c) >> 1 (kit/zo/seeding.py), the kernel's key input."""
    return splitmix64(splitmix64(seed & MASK64) ^ (index & MASK64))


def _same_size(p: torch.Tensor, z: torch.Tensor) -> None:
    if p.numel() != z.numel():
        raise ValueError(f"the fused pass needs p and z of one size, not {p.numel()} and {z.numel()}")


def load(device: torch.device) -> CudaZ:
    """The kernel for `device` (compiled by Triton on first launch); CPU only under the interpreter."""
    if not interpreting() and (device.type != "cuda" or torch.version.cuda is None):
        where = device if device.type != "cuda" else "this torch build (no CUDA)"
        raise ValueError(
            f"the cuda z backend runs on NVIDIA GPUs, not on {where}; use --model.zo_backend auto"
        )
    try:
        return CudaZ(kernel_module())
    except ImportError as exc:
        raise RuntimeError(
            f"the cuda z backend needs Triton ({exc}); it ships with CUDA builds of torch, or use "
            "--model.zo_backend portable (same z)"
        ) from exc


def kernel_module():
    """kit/zo/cuda_kernel.py, compiled for GPUs; under TRITON_INTERPRET=1 a copy of it imported under
    another name, so one process can hold both (Triton decides at decoration time)."""
    if not interpreting():
        from kit.zo import cuda_kernel

        return cuda_kernel
    name = "kit.zo._cuda_kernel_interpreted"
    if name not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("cuda_kernel.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


# -- the start-up self-test ------------------------------------------------------------------------
@dataclass(frozen=True)
class SelfTest:
    """Outcome of the known-answer test of the kernel on one device."""

    device: str
    passed: bool
    detail: str  # "n known answers" or what went wrong

    def record(self) -> str:
        return f"passed ({self.detail})" if self.passed else f"failed: {self.detail}"


def self_test(kernel: CudaZ, device: torch.device, answers=None, param_answers=None) -> SelfTest:
    """Run the kernel on every known answer on `device` (on a GPU: a few ms once compiled); the first
    mismatch fails the test."""
    answers = KNOWN_ANSWERS if answers is None else answers
    param_answers = KNOWN_PARAM_ANSWERS if param_answers is None else param_answers
    name = _device_name(device)
    if interpreting():
        device = torch.device("cpu")  # Triton's interpreter runs the kernel on CPU tensors
    if not answers or not param_answers:
        return SelfTest(name, False, "no known answers to compare with")
    for dist, key, n, mode, scale, keep, want in answers:
        if mode == "fill":
            out = torch.empty(n, dtype=torch.float32, device=device)
            kernel.fill(out, key, dist)
        else:
            out = start_weights(n).to(device)
            kernel.axpy(out, key, scale, keep, dist)
        got = digest(out)
        if got != want:
            return SelfTest(name, False, f"{dist} {mode} key={key} n={n}: digest {got}, native's {want}")
    for dist, seed, index, n, chunk, mode, scale, keep, want in param_answers:
        if mode == "fill":
            out = torch.empty(n, dtype=torch.float32, device=device)
            kernel.fill_param(out, seed, index, chunk, dist)
        else:
            out = start_weights(n).to(device)
            kernel.axpy_param(out, seed, index, chunk, scale, keep, dist)
        got = digest(out)
        if got != want:
            where = f"seed={seed} index={index} n={n} chunks of {chunk}"
            return SelfTest(name, False, f"{dist} {mode} {where}: digest {got}, native's {want}")
    return SelfTest(name, True, f"{len(answers) + len(param_answers)} known answers")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


_lock = threading.Lock()
_results: dict[str, SelfTest] = {}
_announced: set[str] = set()


def checked(device: torch.device, fallback: bool = True) -> SelfTest:
    """The self-test's outcome on `device`, run once per process and device. A failure (wrong bits,
    no Triton, a compile error) with `fallback` prints one line to stderr, once: the caller (`auto`)
    then uses `portable`; without, the caller raises (the cuda backend was asked for by name)."""
    key = str(device)
    with _lock:
        if key not in _results:
            t0 = time.perf_counter()
            try:
                result = self_test(load(device), device)
                if result.passed:  # the first launches compile the kernel (cached on disk after)
                    result = SelfTest(
                        result.device, True, f"{result.detail}, {time.perf_counter() - t0:.2f} s"
                    )
            except Exception as exc:  # any failure to build or run the kernel means: do not use it
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                result = SelfTest(_device_name(device), False, f"{type(exc).__name__}: {first[:200]}")
            _results[key] = result
        result = _results[key]
        if not result.passed and fallback and key not in _announced:
            _announced.add(key)
            print(
                f"[kit] the cuda z kernel failed its self-test on {result.device} ({result.detail}): "
                "using the portable z backend (same z, slower)",
                file=sys.stderr,
                flush=True,
            )
        return result


def results() -> dict[str, SelfTest]:
    """Every self-test run in this process, by device."""
    with _lock:
        return dict(_results)
