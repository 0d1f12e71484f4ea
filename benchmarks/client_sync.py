"""Catch-up cost of a client that missed m rounds: replay the downlinks vs download the weights.

    python benchmarks/client_sync.py [--backend torch native] [--missed 1 10 40] [--measure-seeds 4] [--quick]

Setting: K = 4096 and every round touches 2,000 distinct seeds (the paper's setting), so a downlink
is ~12 KB (sparse encoding). Model: a random Llama with SmolLM2-135M's config (--quick: a tiny one).

    replay          kit.federation.sync.replay: every missed round in order, one pass per touched seed
                    (bit-identical to the server): 2,000 m passes
    merged_replay   sum each seed's scalars first: one pass per seed touched in any missed round (<= K)
    download        the full float32 weights at 100 Mbit/s, on paper: bytes * 8 / 1e8 s

The pass counts and the bookkeeping time come from running the real `replay` / `merged_replay` with a
pass-counting stand-in for the Perturber; the cost of one pass is measured on the model
(`Perturber.add`, median over --measure-seeds seeds x --repeats), and the totals are passes x that
cost + the downlinks' transfer at 100 Mbit/s ("extrapolated": true). `per_pass_cpu_s` is the
pass's process CPU seconds (all threads): less disturbed by other processes than wall time.
Since a pass and a download both scale with the parameter count, the replay/download ratio holds
for bigger models on this CPU.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import (
    DOWNLOAD_BITS_PER_S,
    add_backend_flag,
    backends,
    base_parser,
    emit,
    interleaved,
    machine,
    make_perturber,
    median,
    param_bytes,
    random_llama,
    rounded,
    smollm2_config,
    tiny_config,
)

from kit.federation.messages import Downlink, encode_downlink
from kit.federation.seeds import SeedPool
from kit.federation.sync import merged_replay, replay

LR = 3e-7


class PassCounter:
    """Stands in for a Perturber: counts the passes `replay` asks for, moves nothing."""

    def __init__(self) -> None:
        self.passes = 0

    def add(self, seed: int, alpha: float, decay: float = 0.0, restore: float = 0.0) -> None:
        self.passes += 1


def simulate_downlinks(k: int, touched: int, rounds: int, seed: int = 0) -> list[Downlink]:
    """Downlinks of rounds 1..`rounds`, each with `touched` distinct non-zero scalars."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(1, rounds + 1):
        g = np.zeros(k, dtype=np.float32)
        g[rng.choice(k, touched, replace=False)] = rng.standard_normal(touched)
        out.append(Downlink(r, g))
    return out


def counted(fn, pool: SeedPool, downlinks: list[Downlink]) -> tuple[int, float]:
    """Passes the sync function `fn` makes over `downlinks`, and its own (bookkeeping) seconds."""
    counter = PassCounter()
    t0 = time.perf_counter()
    fn(counter, pool, downlinks, LR)
    return counter.passes, time.perf_counter() - t0


def main() -> None:
    parser = base_parser(__doc__)
    add_backend_flag(parser)
    parser.add_argument("--missed", type=int, nargs="+", default=[1, 10, 40])
    parser.add_argument("--measure-seeds", type=int, default=4, help="passes per timed call")
    args = parser.parse_args()
    options = backends(args.backend, "client_sync")
    if not options:
        return
    k, touched = (256, 125) if args.quick else (4096, 2000)
    repeats = 1 if args.quick else args.repeats

    # 1) the downlinks of the missed rounds, and their bytes on the wire
    pool = SeedPool(k, federation_seed=0)
    downlinks = simulate_downlinks(k, touched, max(args.missed))
    wire = [len(encode_downlink(dl, pool.fingerprint)) for dl in downlinks]

    # 2) the cost of one pass on the model, per backend (interleaved)
    model = random_llama(tiny_config() if args.quick else smollm2_config())
    weights = param_bytes(model)
    perturbers = {b: make_perturber(list(model.parameters()), o) for b, o in options.items()}
    seeds = [pool[j] for j in range(args.measure_seeds)]
    cases = {b: (lambda p=p: [p.add(s, 1e-9) for s in seeds]) for b, p in perturbers.items()}
    cpu: dict[str, list[float]] = {}
    wall = interleaved(cases, repeats, cpu=cpu)
    for p in perturbers.values():
        p.close()

    # 3) one line per backend, number of missed rounds (the last m rounds) and method
    download_s = weights * 8 / DOWNLOAD_BITS_PER_S
    for backend in perturbers:
        per_pass, per_pass_cpu = median(wall[backend]) / len(seeds), median(cpu[backend]) / len(seeds)
        for m in args.missed:
            down_bytes = sum(wire[-m:])
            transfer_s = down_bytes * 8 / DOWNLOAD_BITS_PER_S
            for method, fn in (("replay", replay), ("merged_replay", merged_replay)):
                passes, book_s = counted(fn, pool, downlinks[-m:])
                total = passes * per_pass + book_s + transfer_s
                emit(
                    bench="client_sync",
                    backend=backend,
                    missed_rounds=m,
                    method=method,
                    k=k,
                    seeds_per_round=touched,
                    passes=passes,
                    per_pass_s=rounded(per_pass),
                    per_pass_cpu_s=rounded(per_pass_cpu),
                    bookkeeping_s=rounded(book_s),
                    sync_s=rounded(total),
                    download_s=rounded(download_s),
                    sync_vs_download=rounded(total / download_s, 3),
                    downlink_bytes=down_bytes,
                    weights_bytes=weights,
                    bytes_ratio=rounded(weights / down_bytes, 4),
                    extrapolated=True,
                    measured_passes=len(seeds) * repeats,
                    model="tiny-random" if args.quick else "random smollm2-135m config",
                    repeats=repeats,
                    threads=torch.get_num_threads(),
                    machine=machine(),
                )


if __name__ == "__main__":
    main()
