"""Seeded perturbations z(seed), applied in place to a model's own weights.

    z = Perturber(list(model.parameters()))
    z.add(seed, +eps)          # theta += eps * z(seed)

z(seed) is a pure function of (seed, parameter index): parameter i is cut into fixed chunks of
`chunk_size` elements and chunk c is drawn, in float32, from a generator seeded with mix(seed, i, c).
Fixed chunks make z independent of the number of threads or processes, and let the chunks be drawn
in parallel: each worker draws a chunk into a small cache-resident buffer and applies it at once
(draw + axpy fused), so no full-size copy of z is ever made unless `keep_z` asks for one.
The generator's device type is part of the definition: z on CUDA differs from z on CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch

from kit.zo.seeding import mix

Distribution = Literal["gaussian", "rademacher"]
DEFAULT_CHUNK = 1 << 20


def fill_z(out: torch.Tensor, generator: torch.Generator, distribution: Distribution) -> torch.Tensor:
    """Fill `out` (float32) with i.i.d. draws of the perturbation distribution."""
    if distribution == "gaussian":
        return out.normal_(generator=generator)
    return out.bernoulli_(0.5, generator=generator).mul_(2.0).sub_(1.0)


def decays(param: torch.Tensor) -> bool:
    """Weight decay applies to matrices (embeddings, projections), never to biases or norm scales."""
    return param.dim() >= 2


class Perturber:
    """In-place seeded perturbation and update of a fixed list of parameters.

    Args:
        params: the tensors to perturb (their order defines the parameter index in z).
        distribution: "gaussian" (default) or "rademacher".
        keep_z: keep the last drawn z (one extra copy of the weights) so that the next passes with
            the same seed need no new draw; otherwise z is regenerated in every pass.
        num_threads: CPU workers drawing chunks in parallel (default: torch's intra-op threads).
        chunk_size: elements per chunk; part of the definition of z (changing it changes z).
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        distribution: Distribution = "gaussian",
        keep_z: bool = False,
        num_threads: int | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        if distribution not in ("gaussian", "rademacher"):
            raise ValueError(f"distribution {distribution!r} must be 'gaussian' or 'rademacher' (--zo.distribution)")
        if not params:
            raise ValueError("Perturber needs at least one parameter")
        self.params = list(params)
        for p in self.params:
            if not p.is_contiguous():
                raise ValueError("Perturber needs contiguous parameters")
        self.distribution: Distribution = distribution
        self.chunk_size = chunk_size
        self.device = self.params[0].device
        self.units: list[tuple[int, int, int, int, int]] = []  # (param, chunk, start, size, flat offset)
        offset = 0
        for i, p in enumerate(self.params):
            for c, start in enumerate(range(0, p.numel(), chunk_size)):
                size = min(chunk_size, p.numel() - start)
                self.units.append((i, c, start, size, offset))
                offset += size
        self.numel = offset
        self.keep_z = keep_z
        self._kept: torch.Tensor | None = None
        self._kept_seed: int | None = None
        self._local = threading.local()
        workers = num_threads or torch.get_num_threads()
        self._pool = ThreadPoolExecutor(workers) if self.device.type == "cpu" and workers > 1 else None

    # -- z itself -------------------------------------------------------------------------------
    def _generator(self, seed: int, param_index: int, chunk_index: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(mix(seed, param_index, chunk_index))
        return g

    def _scratch(self) -> torch.Tensor:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = torch.empty(self.chunk_size, dtype=torch.float32, device=self.device)
        return buf

    def z(self, seed: int) -> list[torch.Tensor]:
        """z(seed) materialised, one float32 tensor per parameter (for tests and analysis)."""
        out = [torch.empty(p.shape, dtype=torch.float32, device=self.device) for p in self.params]
        for i, c, start, size, _ in self.units:
            fill_z(out[i].view(-1)[start : start + size], self._generator(seed, i, c), self.distribution)
        return out

    # -- in-place application -------------------------------------------------------------------
    def add(self, seed: int, alpha: float, decay: float = 0.0, restore: float = 0.0) -> None:
        """theta <- (1 - d) * (theta + restore * z) + alpha * z, in one pass per chunk.

        d = `decay` on matrices and 0 on the rest (see `decays`); `restore` lets the last pass of a
        step undo its perturbation and apply the decayed update together.
        """
        use_kept = self._kept is not None and self._kept_seed == seed
        fill_kept = self.keep_z and not use_kept
        if fill_kept:
            if self._kept is None:
                self._kept = torch.empty(self.numel, dtype=torch.float32, device=self.device)
            self._kept_seed = None  # invalid until every chunk is drawn

        @torch.no_grad()  # grad mode is per thread: set it in every worker
        def run(unit: tuple[int, int, int, int, int]) -> None:
            i, c, start, size, offset = unit
            p = self.params[i].view(-1)[start : start + size]
            if use_kept or fill_kept:
                z = self._kept[offset : offset + size]
            else:
                z = self._scratch()[:size]
            if not use_kept:
                fill_z(z, self._generator(seed, i, c), self.distribution)
            d = decay if decay and decays(self.params[i]) else 0.0
            if d:
                p.mul_(1.0 - d)
            p.add_(z, alpha=(1.0 - d) * restore + alpha)

        if self._pool is None:
            for unit in self.units:
                run(unit)
        else:
            list(self._pool.map(run, self.units))
        if fill_kept:
            self._kept_seed = seed

    def release(self) -> None:
        """Free the kept copy of z, if any."""
        self._kept, self._kept_seed = None, None

    def close(self) -> None:
        """Stop the worker threads."""
        self.release()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
