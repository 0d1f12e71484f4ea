"""The `cuda` z backend: z's definition as a Triton kernel on NVIDIA GPUs, imported only on use.

    from kit.zo.cuda import load
    kernel = load(torch.device("cuda"))
    kernel.fill(out, key, "gaussian")       # out (float32, contiguous, on the GPU) = z of chunk key

Not yet verified on a GPU (no session had one): `auto` does not pick it (kit/zo/definition.py
CUDA_KERNEL_VERIFIED); the `gpu`-marked tests in tests/test_zo_portable.py compare it with the
native bits, and passing them is what may turn it on.
"""

from __future__ import annotations

import torch

from kit.zo.portable import QUARTER_TURN_2_24

BLOCK_SIZE = 1024


class CudaZ:
    """Fills float32 GPU tensors with z (the same bits as the native and portable backends)."""

    def __init__(self, kernel) -> None:
        self._kernel = kernel

    def fill(self, out: torch.Tensor, key: int, distribution: str = "gaussian") -> None:
        if out.dtype != torch.float32 or not out.is_contiguous() or out.device.type != "cuda":
            raise ValueError("the cuda z backend fills contiguous float32 CUDA tensors")
        n = out.numel()
        grid = (-(-n // BLOCK_SIZE),)
        self._kernel[grid](
            out,
            n,
            key & 0xFFFFFFFF,
            (key >> 32) & 0xFFFFFFFF,
            QUARTER_TURN_2_24,
            RADEMACHER=distribution == "rademacher",
            BLOCK_SIZE=BLOCK_SIZE,
            enable_fp_fusion=False,  # no FMA contraction: each product and sum rounded on its own
        )


def load(device: torch.device) -> CudaZ:
    """The Triton kernel for `device` (compiled by Triton on first launch)."""
    if device.type != "cuda" or torch.version.cuda is None:
        where = device if device.type != "cuda" else "this torch build (no CUDA)"
        raise ValueError(
            f"the cuda z backend runs on NVIDIA GPUs, not on {where}; use --model.zo_backend auto"
        )
    try:
        from kit.zo.cuda_kernel import fill_kernel
    except ImportError as exc:
        raise RuntimeError(
            f"the cuda z backend needs Triton ({exc}); it ships with CUDA builds of torch, or use "
            "--model.zo_backend portable (same z)"
        ) from exc
    return CudaZ(fill_kernel)
