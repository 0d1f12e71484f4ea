"""Seeded perturbations z(seed), applied in place to a model's own weights.

    z = Perturber(list(model.parameters()))
    z.add(seed, +eps)          # theta += eps * z(seed)

z(seed) is a pure function of (seed, parameter index): parameter i is cut into fixed chunks of
`chunk_size` elements and chunk c is drawn, in float32, under the 64-bit key mix(seed, i, c).
Fixed chunks make z independent of the number of threads or processes, and let the chunks be drawn
in parallel: each worker draws a chunk into a small cache-resident buffer and applies it at once
(draw + axpy fused), so no full-size copy of z is ever made unless `keep_z` asks for one.

One definition of z (Philox-4x32-10 + float32 Box-Muller, kit/zo/native/zkernel.c), three backends
with the same bits (kit/zo/definition.py): `native` (C kernels, CPU), `cuda` (Triton, NVIDIA GPUs)
and `portable` (torch ops, any device); `auto` picks one for the device. The legacy `torch` backend
(a torch.Generator per chunk) is another z, which depends on the device type and the GPU model.

float16 / bfloat16 weights (`--model.master_dtype`) are moved with the reference's out-of-place
arithmetic in their dtype (kit/zo/master.py), by the same float32 z rounded to that dtype.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch

from kit.zo import portable
from kit.zo.definition import BACKENDS, Backend, ZDefinition, choose_backend, definition_of
from kit.zo.master import REFERENCE_DTYPES, perturb_, update_
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


def _balanced_batches(units: list, count: int) -> list[list]:
    """Split the units into at most `count` lists of about equal total size (largest first, greedy)."""
    loads = [[0, []] for _ in range(min(count, len(units)))]
    for unit in sorted(units, key=lambda u: -u[3]):
        lightest = min(loads, key=lambda entry: entry[0])
        lightest[0] += unit[3]
        lightest[1].append(unit)
    return [batch for _, batch in sorted(loads, key=lambda entry: -entry[0]) if batch]


class Perturber:
    """In-place seeded perturbation and update of a fixed list of parameters.

    Args:
        params: the tensors to perturb (their order defines the parameter index in z).
        distribution: "gaussian" (default) or "rademacher".
        keep_z: keep the last drawn z (one extra copy of the weights) so that the next passes with
            the same seed need no new draw; otherwise z is regenerated in every pass.
        num_threads: CPU workers drawing chunks in parallel (default: torch's intra-op threads).
        chunk_size: elements per chunk; part of the definition of z (changing it changes z).
        backend: "auto" (default: see `kit.zo.definition.choose_backend`), "native" (C kernels,
            CPU), "cuda" (Triton kernel, NVIDIA GPU), "portable" (torch ops, any device): one z, the
            same bits; or the legacy "torch" (a torch.Generator per chunk: another z, which depends on
            the device type and GPU model).
        recorded: a run's recorded z definition: `auto` then picks a backend that computes it.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        distribution: Distribution = "gaussian",
        keep_z: bool = False,
        num_threads: int | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        backend: Backend = "auto",
        recorded: ZDefinition | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} must be one of {', '.join(BACKENDS)} (--model.zo_backend)")
        if distribution not in ("gaussian", "rademacher"):
            raise ValueError(
                f"distribution {distribution!r} must be 'gaussian' or 'rademacher' (--model.distribution)"
            )
        if not params:
            raise ValueError("Perturber needs at least one parameter")
        self.params = list(params)
        for p in self.params:
            if not p.is_contiguous():
                raise ValueError("Perturber needs contiguous parameters")
        self.distribution: Distribution = distribution
        self.chunk_size = chunk_size
        self.device = self.params[0].device
        float32 = all(p.dtype == torch.float32 for p in self.params)
        dtypes = {p.dtype for p in self.params}
        # float16 / bfloat16 master weights: the float32 z of any backend, rounded, then the
        # reference's out-of-place arithmetic in that dtype (kit/zo/master.py)
        self.master: torch.dtype | None = None
        if len(dtypes) == 1 and dtypes <= set(REFERENCE_DTYPES):
            self.master = dtypes.pop()
        if backend == "auto" and not float32 and self.master is None and recorded is None:
            backend = "portable"  # float64 weights (tests, analysis): z in float32, the update in float64
        backend = choose_backend(backend, self.device, recorded)
        self.backend: Backend = backend
        self.definition: ZDefinition = definition_of(backend, self.device.type, chunk_size, distribution)
        self._native = self._cuda = None
        if backend in ("native", "cuda") and not float32 and self.master is None:
            raise ValueError(
                f"the {backend} z backend needs float32, float16 or bfloat16 parameters of one dtype; "
                "use --model.zo_backend auto"
            )
        if backend == "native":
            if self.device.type != "cpu":
                raise ValueError("the native z backend runs on CPU; use --model.zo_backend auto")
            from kit.zo.native import load

            self._native = load()  # builds the kernels on first use; raises with the fix if it cannot
        elif backend == "cuda":
            from kit.zo.cuda import load as load_cuda

            self._cuda = load_cuda(self.device)  # Triton, imported only here; raises with the fix
        self.units: list[tuple[int, int, int, int, int]] = []  # (param, chunk, start, size, flat offset)
        offset = 0
        for i, p in enumerate(self.params):
            for c, start in enumerate(range(0, p.numel(), chunk_size)):
                size = min(chunk_size, p.numel() - start)
                self.units.append((i, c, start, size, offset))
                offset += size
        self.numel = offset
        self._param_offsets = [0]  # where each parameter starts in the flat (kept) z
        for p in self.params[:-1]:
            self._param_offsets.append(self._param_offsets[-1] + p.numel())
        self.keep_z = keep_z
        self._kept: torch.Tensor | None = None
        self._kept_seed: int | None = None
        self._local = threading.local()
        workers = num_threads or torch.get_num_threads()
        # portable: torch's own ops already use every core
        threaded = self.device.type == "cpu" and workers > 1 and backend not in ("portable", "cuda")
        threaded = threaded and (self.master is None or backend == "native")  # 16-bit: native kernels
        self._pool = ThreadPoolExecutor(workers) if threaded else None
        # native: the units go to the pool in a few size-balanced batches (a task per unit costs more
        # in thread hand-offs than the kernels of the many small units take); z does not change
        self._batches = _balanced_batches(self.units, 4 * workers) if self._pool is not None else [self.units]

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
        if self._native is not None:
            for i, c, start, size, _ in self.units:
                self._native.fill(out[i].data_ptr() + 4 * start, size, mix(seed, i, c), self.distribution)
            return out
        if self._cuda is not None:
            for i, t in enumerate(out):
                self._cuda.fill_param(t.view(-1), seed, i, self.chunk_size, self.distribution)
            return out
        for i, c, start, size, _ in self.units:
            self._draw(out[i].view(-1)[start : start + size], seed, i, c)
        return out

    def _draw(self, out: torch.Tensor, seed: int, i: int, c: int) -> None:
        """out = the chunk (i, c) of z(seed), on the tensor backends (torch, portable, cuda)."""
        if self.backend == "torch":
            fill_z(out, self._generator(seed, i, c), self.distribution)
        elif self._native is not None:  # a float16 / bfloat16 master's z: native's float32 bits
            self._native.fill(out.data_ptr(), out.numel(), mix(seed, i, c), self.distribution)
        elif self._cuda is not None:
            self._cuda.fill(out, mix(seed, i, c), self.distribution)
        else:
            out.copy_(portable.z_chunk(out.numel(), mix(seed, i, c), self.distribution, self.device))

    # -- in-place application -------------------------------------------------------------------
    def add(self, seed: int, alpha: float, decay: float = 0.0, restore: float = 0.0) -> None:
        """theta <- (1 - d) * (theta + restore * z) + alpha * z, in one pass per chunk.

        d = `decay` on matrices and 0 on the rest (see `decays`); `restore` lets the last pass of a
        step undo its perturbation and apply the decayed update together. A float16 / bfloat16 master
        takes only the perturbation theta + alpha * z here (its update is `update`).
        """
        if self.master is not None:
            if decay or restore:
                raise ValueError("a float16 / bfloat16 master moves by add(seed, alpha) and update() only")
            self._reference_pass(
                seed,
                lambda p, zq: perturb_(p, zq, alpha),
                lambda p, z, n, fmt: self._native.half_perturb(p, z, n, fmt, alpha),
            )
            return
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
            z = self._kept[offset : offset + size] if use_kept or fill_kept else self._scratch()[:size]
            if not use_kept:
                self._draw(z, seed, i, c)
            d = decay if decay and decays(self.params[i]) else 0.0
            if self.backend == "torch":  # legacy bits: keep its own update formula
                if d:
                    p.mul_(1.0 - d)
                p.add_(z, alpha=(1.0 - d) * restore + alpha)
            else:  # the native kernels' float32 axpy, op for op
                keep = 1.0 - d
                portable.axpy_(p, z, keep * restore + alpha, keep)

        if self._cuda is not None:  # one fused launch per parameter, all its chunks
            self._cuda_add(seed, alpha, decay, restore, use_kept, fill_kept)
        elif self._native is not None:
            run_unit = self._native_run(seed, alpha, decay, restore, use_kept, fill_kept)
            if self._pool is None:
                for unit in self.units:
                    run_unit(unit)
            else:
                list(self._pool.map(lambda batch: [run_unit(u) for u in batch], self._batches))
        elif self._pool is None:
            for unit in self.units:
                run(unit)
        else:
            list(self._pool.map(run, self.units))
        if self._native is not None or self._cuda is not None:
            for p in self.params:  # raw-pointer writes: tell autograd the tensors changed, as add_ does
                torch.autograd.graph.increment_version(p)
        if fill_kept:
            self._kept_seed = seed

    def _cuda_add(self, seed, alpha, decay, restore, use_kept, fill_kept) -> None:
        """`add` on the Triton kernel: per parameter one launch (draw + axpy, z kept if asked), or
        with the kept z the same float32 axpy in torch ops."""
        for i, (p, start) in enumerate(zip(self.params, self._param_offsets, strict=True)):
            keep = 1.0 - decay if decay and decays(p) else 1.0
            flat = p.view(-1)
            kept = self._kept[start : start + flat.numel()] if use_kept or fill_kept else None
            if use_kept:
                portable.axpy_(flat, kept, keep * restore + alpha, keep)
            else:
                self._cuda.axpy_param(
                    flat, seed, i, self.chunk_size, keep * restore + alpha, keep, self.distribution, z=kept
                )

    def update(self, seed: int, lr: float, grad: float, decay: float = 0.0, restore: float = 0.0) -> None:
        """theta <- theta + restore * z, then theta - lr * grad * z (with `add`'s decay d on matrices).

        float32: one fused pass, `add(seed, -lr * grad, decay, restore)`. float16 / bfloat16: the
        reference's two out-of-place expressions per chunk, theta + restore * z, then
        theta - lr * (grad * z), each op rounded to the dtype (kit/zo/master.py); no decay.
        """
        if self.master is None:
            self.add(seed, -lr * grad, decay=decay, restore=restore)
            return
        if decay:
            raise ValueError("a float16 / bfloat16 master runs without weight decay (--model.weight_decay 0)")

        def move(p: torch.Tensor, zq: torch.Tensor) -> None:
            if restore:
                perturb_(p, zq, restore)
            update_(p, zq, lr, grad)

        self._reference_pass(
            seed, move, lambda p, z, n, fmt: self._native.half_update(p, z, n, fmt, restore, lr, grad)
        )

    @torch.no_grad()
    def _reference_pass(self, seed: int, move, native_move) -> None:
        """`move(p, zq)` on every chunk of a float16 / bfloat16 master: zq = the chunk's float32 z
        rounded to the weights' dtype (round to nearest even). On the native backend the same ops run
        as C kernels, `native_move(p address, z address, n, "f16" | "bf16")` (kit/zo/native/zkernel.c),
        in the worker threads."""
        use_kept = self._kept is not None and self._kept_seed == seed
        fill_kept = self.keep_z and not use_kept
        if fill_kept:
            if self._kept is None:
                self._kept = torch.empty(self.numel, dtype=torch.float32, device=self.device)
            self._kept_seed = None
        fmt = "f16" if self.master == torch.float16 else "bf16"

        def run(unit: tuple[int, int, int, int, int]) -> None:
            i, c, start, size, offset = unit
            z = self._kept[offset : offset + size] if use_kept or fill_kept else self._scratch()[:size]
            if not use_kept:
                self._draw(z, seed, i, c)
            if self._native is not None:
                native_move(self.params[i].data_ptr() + 2 * start, z.data_ptr(), size, fmt)
            else:
                move(self.params[i].view(-1)[start : start + size], z.to(self.master))

        if self._pool is None:
            for unit in self.units:
                run(unit)
        else:
            list(self._pool.map(lambda batch: [run(u) for u in batch], self._batches))
        if self._native is not None:
            for p in self.params:  # raw-pointer writes: tell autograd the tensors changed
                torch.autograd.graph.increment_version(p)
        if fill_kept:
            self._kept_seed = seed

    def _native_run(self, seed, alpha, decay, restore, use_kept, fill_kept):
        """The per-unit work of `add` on the native kernels (ctypes releases the GIL: the pool runs
        them in parallel)."""
        zk, dist = self._native, self.distribution
        kept = self._kept.data_ptr() if (use_kept or fill_kept) else 0

        def run(unit: tuple[int, int, int, int, int]) -> None:
            i, c, start, size, offset = unit
            keep = 1.0 - decay if decay and decays(self.params[i]) else 1.0
            scale = keep * restore + alpha
            p = self.params[i].data_ptr() + 4 * start
            if use_kept:
                zk.axpy_z(p, kept + 4 * offset, size, scale, keep)
            elif fill_kept:
                zk.axpy_fill(p, kept + 4 * offset, size, mix(seed, i, c), scale, keep, dist)
            else:
                zk.axpy(p, size, mix(seed, i, c), scale, keep, dist)

        return run

    def release(self) -> None:
        """Free the kept copy of z, if any."""
        self._kept, self._kept_seed = None, None

    def close(self) -> None:
        """Stop the worker threads."""
        self.release()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
