"""Print kit/zo/cuda.py's KNOWN_ANSWERS, computed by the native z kernels (run after a change of z's
definition, paste the output over the table; tests/test_zo_cuda_kernel.py checks the table against
native on every CI run).

    PYTHONPATH=. .venv/bin/python scripts/zo_known_answers.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit.zo.cuda import digest, start_weights  # noqa: E402
from kit.zo.native import load  # noqa: E402
from kit.zo.seeding import mix  # noqa: E402

TOP = (1 << 64) - 1
# (distribution, key, n, mode, scale, keep). Keys 13045, 96227, 59453: +0 and -0 in the first 700
# elements of gaussian z (r = 0); 1, 1 << 32, (1 << 32) | 1: a key half equal to 1; TOP: halves >= 2^31.
# Sizes: 1, tails of a 64-float block, the kernel's 512-element programs and their edges.
CASES = (
    ("gaussian", 0, 1, "fill", 0.0, 1.0),
    ("gaussian", 1, 513, "fill", 0.0, 1.0),
    ("gaussian", 1 << 32, 63, "fill", 0.0, 1.0),
    ("gaussian", (1 << 32) | 1, 1024, "fill", 0.0, 1.0),
    ("gaussian", TOP, 1000, "fill", 0.0, 1.0),
    ("gaussian", (1 << 63) - 1, 4099, "fill", 0.0, 1.0),
    ("gaussian", 13045, 180, "fill", 0.0, 1.0),
    ("gaussian", 96227, 60, "fill", 0.0, 1.0),
    ("gaussian", 59453, 700, "fill", 0.0, 1.0),
    ("rademacher", 1, 65, "fill", 0.0, 1.0),
    ("rademacher", 1 << 32, 512, "fill", 0.0, 1.0),
    ("rademacher", TOP, 777, "fill", 0.0, 1.0),
    ("gaussian", 1, 1100, "axpy", 1e-3, 0.999),
    ("gaussian", 1 << 32, 640, "axpy", -2e-3, 1.0),
    ("gaussian", 13045, 180, "axpy", 0.0, 1.0),
    ("rademacher", (1 << 32) | 1, 300, "axpy", 5e-4, 0.99),
)

# Whole parameters as `Perturber` draws them (chunk c of parameter `index` under mix(seed, index, c)):
# (distribution, seed, index, numel, chunk_size, mode, scale, keep); chunk sizes a multiple of the
# kernel's 512-element programs, not one of 64, and a single 64-float block.
PARAM_CASES = (
    ("gaussian", 5, 0, 1100, 512, "fill", 0.0, 1.0),
    ("gaussian", (1 << 63) + 7, 3, 700, 100, "axpy", 1e-3, 0.99),
    ("rademacher", 1, 1, 300, 64, "fill", 0.0, 1.0),
)


def native_param_answer(
    dist: str, seed: int, index: int, n: int, chunk: int, mode: str, scale: float, keep: float
) -> str:
    """The digest native gives for one parameter case, chunk by chunk."""
    zk = load()
    out = torch.empty(n, dtype=torch.float32) if mode == "fill" else start_weights(n)
    for c, start in enumerate(range(0, n, chunk)):
        size, key = min(chunk, n - start), mix(seed, index, c)
        if mode == "fill":
            zk.fill(out.data_ptr() + 4 * start, size, key, dist)
        else:
            zk.axpy(out.data_ptr() + 4 * start, size, key, scale, keep, dist)
    return digest(out)


def native_answer(dist: str, key: int, n: int, mode: str, scale: float, keep: float) -> str:
    """The digest native gives for one case."""
    zk = load()
    if mode == "fill":
        out = torch.empty(n, dtype=torch.float32)
        zk.fill(out.data_ptr(), n, key, dist)
    else:
        out = start_weights(n)
        zk.axpy(out.data_ptr(), n, key, scale, keep, dist)
    return digest(out)


def main() -> None:
    print("KNOWN_ANSWERS: tuple[tuple[str, int, int, str, float, float, str], ...] = (")
    for case in CASES:
        print(f"    {(*case, native_answer(*case))!r},")
    print(")")
    print("KNOWN_PARAM_ANSWERS: tuple[tuple[str, int, int, int, int, str, float, float, str], ...] = (")
    for case in PARAM_CASES:
        print(f"    {(*case, native_param_answer(*case))!r},")
    print(")")


if __name__ == "__main__":
    main()
