"""Cost of robust aggregation: FedKSeed's server rule per round, mean vs median vs trimmed mean.

    python benchmarks/robust_aggregation.py [--clients 10 50 200] [--quick]

Setting: K = 4096 seeds, n clients per round each uploading a dense K-vector (the worst case for a
sort: every seed touched), aggregated by `kit.federation.server.Server.aggregate_train` with
`--fed.aggregation` mean, median and trimmed_mean (trim 0.1), clipping off. Each case is timed
interleaved (`common.interleaved`, 20 aggregations per timed run) beside one forward of the real
SmolLM2-135M on the real 1 x 256 batch (--quick: the tiny random Llama), so `ratio_vs_mean` and
`ratio_vs_forward` say what the robust rules cost next to the mean and to the client's own work.
"""

from __future__ import annotations

import numpy as np
import torch
from common import (
    base_parser,
    bench_model,
    emit,
    interleaved,
    machine,
    median,
    module_loss,
    real_batch,
    rounded,
)

from kit.federation.messages import Uplink
from kit.federation.seeds import SeedPool
from kit.federation.server import Server

K, CALLS = 4096, 20


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    args = parser.parse_args()
    repeats = 1 if args.quick else max(args.repeats, 3)
    model = bench_model(args.quick)
    loss = module_loss(model, real_batch())
    pool = SeedPool(K, 42)
    for n in args.clients:
        rng = np.random.default_rng(n)
        ups = [Uplink(1, c, rng.standard_normal(K).astype(np.float32)) for c in range(n)]
        samples = rng.integers(1, 100, size=n).tolist()

        def rule(name: str, ups=ups, samples=samples):
            def run() -> None:
                for _ in range(CALLS):
                    Server(pool, aggregation=name, trim_fraction=0.1).aggregate_train(ups, samples)

            return run

        cases = {name: rule(name) for name in ("mean", "median", "trimmed_mean")}
        cases["forward"] = lambda: torch.no_grad()(loss)()
        times = interleaved(cases, repeats)
        per_round = {name: median(times[name]) / CALLS for name in ("mean", "median", "trimmed_mean")}
        forward = median(times["forward"])
        emit(
            bench="robust_aggregation",
            machine=machine(),
            K=K,
            clients=n,
            forward_s=rounded(forward),
            **{f"{name}_s": rounded(t) for name, t in per_round.items()},
            ratio_vs_mean={name: rounded(t / per_round["mean"]) for name, t in per_round.items()},
            ratio_vs_forward={name: rounded(t / forward) for name, t in per_round.items()},
            quick=args.quick,
        )


if __name__ == "__main__":
    main()
