"""Compile kit/zo/cuda_kernel.py's kernel ahead of time for a GPU architecture, without a GPU, and
read its PTX for the instructions that would change z's bits.

The arguments go through Triton's own launcher binding (`create_function_from_signature`, as
`JITFunction.run` does), so the kernel is compiled with exactly the types, constants and
specialisations a launch with those arguments gets on a GPU; `ptxas` (shipped with Triton) then
assembles it for the architecture, as the driver would.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.compiler import compile as triton_compile
from triton.runtime.jit import create_function_from_signature

KERNEL_SOURCE = Path(__file__).resolve().parents[1] / "kit" / "zo" / "cuda_kernel.py"

# Instructions the kernel's own float operations must not compile to (any of them rounds
# differently from native's IEEE float32 + - * / sqrt on some input):
HAZARDS = {
    "fused multiply-add": re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:fma|mad)\.[a-z.]*f(?:16|32|64)\b", re.M),
    "approximate division": re.compile(r"\bdiv\.(?:full|approx)\b"),
    "approximate reciprocal": re.compile(r"\brcp\.approx\b"),
    "approximate square root": re.compile(r"\b(?:sqrt|rsqrt)\.approx\b"),
    "flush-to-zero": re.compile(r"\.ftz\b"),
    "float negation": re.compile(r"\bneg\.f32\b"),
    "0 - x negation": re.compile(r"\bsub\.[a-z.]*f32\s+%\w+,\s*0f[08]0000000,"),
}


def load_module(source: str | None = None, name: str = "zkernel_aot"):
    """The kernel module compiled for GPUs (not interpreted); `source` replaces the file's text."""
    path = KERNEL_SOURCE
    if source is not None:  # Triton reads a kernel's source through inspect: it needs a real file
        import tempfile

        path = Path(tempfile.mkdtemp()) / f"{name}.py"
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compile_for(module, arch: int, h: int, n: int, mode: int, rademacher: bool, per_chunk: bool = True):
    """The kernel compiled for sm_<arch> as `kit.zo.cuda.CudaZ` launches it on a parameter of n
    floats in chunks of n (key or key prefix h): (compiled kernel, signature types, constexpr values)."""
    from kit.zo.cuda import CudaZ

    kernel = module.z_kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    buf = torch.empty(max(n, 16), dtype=torch.float32)[:n]  # only its dtype and alignment are read
    dist = "rademacher" if rademacher else "gaussian"
    _, args, options = CudaZ(module).arguments(buf, buf, h, per_chunk, n, 1e-3, 0.999, mode, dist)
    bound, specialization, opts = binder(*args, **options)
    opts, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, specialization, opts)
    compiled = triton_compile(
        ASTSource(kernel, signature, constexprs, attrs), target=target, options=opts.__dict__
    )
    names = list(signature)
    return compiled, signature, {names[path[0]]: value for path, value in constexprs.items()}


def hazards(ptx: str) -> list[str]:
    """The hazards found in a PTX text, each with its first offending line."""
    found = []
    for what, pattern in HAZARDS.items():
        m = pattern.search(ptx)
        if m:
            line = ptx[ptx.rfind("\n", 0, m.start()) + 1 : ptx.find("\n", m.end())].strip()
            found.append(f"{what}: {line}")
    return found
