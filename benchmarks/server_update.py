"""Server global update after round r: ours (round r's scalars only) vs the reference's rebuild from theta_0.

    python benchmarks/server_update.py [--backend torch native] [--rounds 1 10 40] [--measure-seeds 4]

Setting (the paper's Dolly runs): K = 4096 seeds, 10 clients x 200 local steps per round, seeds drawn
uniformly (FedKSeed), so a round touches ~1,580 distinct seeds. Weights: a random Llama with
SmolLM2-135M's config (--quick: a tiny one, K = 256, 2 clients x 16 steps).

    ours        kit.federation.sync.apply_scalars(G_r): one in-place pass per seed touched in round r,
                on top of theta_{r-1}; independent of r.
    reference   server.py `update_global_model_by_seed_pool`: deepcopy(theta_0), then one `zo_update`
                (a full torch.normal regeneration of z, non-in-place) per seed whose accumulated
                scalar over rounds 1..r is non-zero: |union of touched seeds| passes, growing with r
                until it saturates at K.

Passes of a whole round take hours on a 2-core CPU, so both sides are timed interleaved on the first
`--measure-seeds` seeds of round 1 and the totals are per-seed cost x passes (+ the reference's
deepcopy), flagged "extrapolated": true. A figure whose pass count fits in --measure-seeds is
measured outright ("extrapolated": false). `speedup_vs_reference_cpu` is the same from process CPU
seconds (robust to other processes' load).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from common import (
    add_backend_flag,
    backends,
    base_parser,
    emit,
    interleaved,
    machine,
    make_perturber,
    median,
    random_llama,
    reference_update,
    rounded,
    smollm2_config,
    tiny_config,
)

from kit.federation.aggregate import aggregate, client_weights
from kit.federation.seeds import SeedPool
from kit.federation.sync import apply_scalars

LR = 3e-7


def simulate_rounds(k: int, clients: int, steps: int, rounds: int, seed: int = 0) -> list[np.ndarray]:
    """Each round's aggregated scalars G (length K): every client draws `steps` seeds uniformly."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        uplinks = []
        for _ in range(clients):
            acc = np.zeros(k)
            np.add.at(acc, rng.integers(0, k, steps), rng.standard_normal(steps))
            uplinks.append(acc.astype(np.float32))
        out.append(aggregate(uplinks, client_weights([1] * clients)))
    return out


def reference_global_update(w0: torch.nn.Module, pool: SeedPool, seed_pool: np.ndarray) -> torch.nn.Module:
    """Reference server.py `update_global_model_by_seed_pool`: rebuild from a deep copy of theta_0."""
    model = copy.deepcopy(w0)
    params = list(model.parameters())
    for j in np.flatnonzero(seed_pool).tolist():
        reference_update(params, pool[j], float(seed_pool[j]), LR)
    return model


def first_seeds(scalars: np.ndarray, n: int) -> np.ndarray:
    """`scalars` with only its first `n` non-zero entries kept."""
    out = np.zeros_like(scalars)
    idx = np.flatnonzero(scalars)[:n]
    out[idx] = scalars[idx]
    return out


def main() -> None:
    parser = base_parser(__doc__)
    add_backend_flag(parser)
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 10, 40])
    parser.add_argument("--measure-seeds", type=int, default=4, help="seeds per timed call (per-seed cost)")
    args = parser.parse_args()
    options = backends(args.backend, "server_update")
    if not options:
        return
    k, clients, steps = (256, 2, 16) if args.quick else (4096, 10, 200)
    repeats = 1 if args.quick else args.repeats
    measure = 10**9 if args.quick else args.measure_seeds

    # 1) the rounds' scalars, and what each side must replay after round r
    rounds = simulate_rounds(k, clients, steps, max(args.rounds))
    touched = [int(np.count_nonzero(g)) for g in rounds]
    seed_pool = np.cumsum(rounds, axis=0)  # the reference's accumulated scalars after each round
    reference_passes = [int(np.count_nonzero(s)) for s in seed_pool]

    # 2) the model: theta_0 for the reference, a working copy moved in place for ours (per backend)
    w0 = random_llama(tiny_config() if args.quick else smollm2_config())
    theta = copy.deepcopy(w0)
    perturbers = {b: make_perturber(list(theta.parameters()), o) for b, o in options.items()}
    pool = SeedPool(k, federation_seed=0)

    # 3) per-seed costs, interleaved: the same first n seeds of round 1 on every side
    g1 = first_seeds(rounds[0], measure)
    n = int(np.count_nonzero(g1))
    cases = {b: (lambda p=p: apply_scalars(p, pool, g1, LR)) for b, p in perturbers.items()}
    cases["reference"] = lambda: reference_global_update(w0, pool, g1)
    cases["deepcopy"] = lambda: copy.deepcopy(w0)
    cpu: dict[str, list[float]] = {}
    wall = interleaved(cases, repeats, cpu=cpu)

    def reference_cost(t: dict[str, list[float]]) -> tuple[float, float]:
        """The reference's deepcopy and its cost per seed (medians)."""
        per_seed = [(r - c) / n for r, c in zip(t["reference"], t["deepcopy"], strict=True)]
        return median(t["deepcopy"]), median(per_seed)

    (copy_s, ref_seed), (copy_cpu, ref_cpu) = reference_cost(wall), reference_cost(cpu)

    # 4) one line per backend and round r
    for backend, perturber in perturbers.items():
        ours_seed, ours_cpu = median(wall[backend]) / n, median(cpu[backend]) / n
        for r in args.rounds:
            ours_n, ref_n = touched[r - 1], reference_passes[r - 1]
            real = r == 1 and n == ours_n
            ours_s = median(wall[backend]) if real else ours_seed * ours_n
            ref_s = median(wall["reference"]) if real else copy_s + ref_seed * ref_n
            emit(
                bench="server_update",
                backend=backend,
                round=r,
                k=k,
                clients=clients,
                local_steps=steps,
                ours_passes=ours_n,
                reference_passes=ref_n,
                ours_s=rounded(ours_s),
                reference_s=rounded(ref_s),
                speedup_vs_reference=rounded(ref_s / ours_s, 3),
                speedup_vs_reference_cpu=rounded((copy_cpu + ref_cpu * ref_n) / (ours_cpu * ours_n), 3),
                ours_per_seed_s=rounded(ours_seed),
                reference_per_seed_s=rounded(ref_seed),
                reference_deepcopy_s=rounded(copy_s),
                extrapolated=not real,
                measured_seeds=n,
                model="tiny-random" if args.quick else "random smollm2-135m config",
                params=sum(p.numel() for p in w0.parameters()),
                repeats=repeats,
                threads=torch.get_num_threads(),
                machine=machine(),
            )
        perturber.close()


if __name__ == "__main__":
    main()
