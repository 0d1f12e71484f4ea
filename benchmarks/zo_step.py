"""One FedKSeed ZO step on the real SmolLM2-135M, against its two forwards and the reference step.

    python benchmarks/zo_step.py [--backend torch native] [--pool-intraop inherit 1] [--repeats 3] [--quick]

Batch: one real Dolly example, 1 x 256 tokens, labels on the response (benchmarks/common.py).
Loss: `FedKSeedModule.batch_loss` (forward + response-only cross-entropy, no grad), float32; the
reference step uses the reference's forward, Hugging Face's `model(**batch).loss`.
For each z mode ("kept": Perturber(keep_z=True), z drawn once per step; "regen": keep_z=False,
z redrawn in each of the 3 passes) it times, interleaved in one process:

    step            kit.zo.zo_step: +eps, forward, -2 eps, forward, restore+update (3 in-place passes)
    two_forwards    the step's two forwards alone (the floor any two-point ZO step pays)
    reference_step  the reference FedKSeed/MeZO step (common.reference_step: 4 full single-stream
                    draws of z via torch.manual_seed + torch.normal, non-in-place updates)

and prints one JSON line per (backend, mode, pool threads). Each case also clocks the forwards it makes, so
`ratio_vs_two_forwards` is a step over its *own* two forwards (median over rounds; contention hits
both alike) and `passes_s` is the step minus them; `ratio_vs_separate_forwards` divides by the
separate two_forwards case of the same round, `speedup_vs_reference` pairs the steps of a round;
the `*_cpu` ratios are the same from process CPU seconds (robust to other processes' load).

--pool-intraop sets the torch intra-op threads of each torch-backend worker ("inherit": what the kit
does today, the process's count; a worker fixes it at its first torch op, so only the count at the
Perturber's first pass matters). The forwards always run with the process's threads.
Goals on a 2-core CPU: kept <= 1.3x and regen <= 1.8x the two forwards, >= 2.5x faster than the
reference step.
"""

from __future__ import annotations

import itertools
import time

import torch
from common import (
    EPS,
    LR,
    add_backend_flag,
    backends,
    base_parser,
    bench_model,
    emit,
    interleaved,
    machine,
    make_perturber,
    median,
    module_loss,
    paired_ratio,
    real_batch,
    reference_loss,
    reference_step,
    rounded,
)

from kit.federation.seeds import SeedPool
from kit.zo.estimator import zo_step

GOAL_RATIO = {"kept": 1.3, "regen": 1.8}
GOAL_SPEEDUP = 2.5


class TimedLoss:
    """The loss function with a clock: the wall and CPU seconds a case spends in its own forwards."""

    def __init__(self, fn) -> None:
        self.fn, self.wall, self.cpu = fn, 0.0, 0.0
        self.laps: list[float] = []
        self.cpu_laps: list[float] = []

    def __call__(self) -> torch.Tensor:
        t0, c0 = time.perf_counter(), time.process_time()
        out = self.fn()
        self.wall += time.perf_counter() - t0
        self.cpu += time.process_time() - c0
        return out

    def lap(self, case, *args) -> None:
        """Run `case(self, *args)` and record the forward seconds it took."""
        self.wall, self.cpu = 0.0, 0.0
        case(self, *args)
        self.laps.append(self.wall)
        self.cpu_laps.append(self.cpu)


def main() -> None:
    parser = base_parser(__doc__)
    add_backend_flag(parser)
    parser.add_argument(
        "--pool-intraop",
        nargs="+",
        default=["inherit", "1"],
        help="torch threads per worker of the torch backend: 'inherit' and/or integers",
    )
    args = parser.parse_args()
    options = backends(args.backend, "zo_step")
    if not options:
        return

    # 1) the model, one real batch, the kit's loss
    seq_len = 64 if args.quick else 256
    model = bench_model(args.quick)
    batch = real_batch(seq_len)
    loss_fn = module_loss(model, batch)
    params = list(model.parameters())

    # 2) one Perturber per (backend, mode, worker threads); every call takes the next seed of the pool
    pool = SeedPool(4096, federation_seed=0)
    draws = itertools.count()

    def next_seed() -> tuple[int, int]:
        j = next(draws) % pool.k
        return j, pool[j]

    intraops = [None if t == "inherit" else int(t) for t in args.pool_intraop]
    configs = [
        (backend, mode, intra)
        for backend in options
        for mode in GOAL_RATIO
        for intra in (intraops if backend == "torch" else [None])
    ]  # native workers run no torch op
    perturbers = {c: make_perturber(params, options[c[0]], c[2], keep_z=c[1] == "kept") for c in configs}

    # 3) the cases, timed round-robin; each also times the forwards it makes (its own loss clock)
    clocks = {name: TimedLoss(loss_fn) for name in ["two_forwards", *configs]}
    clocks["reference_step"] = TimedLoss(reference_loss(model, batch))  # the reference's own forward

    def two_forwards(loss: TimedLoss) -> None:
        loss(), loss()

    def kit_step(loss: TimedLoss, perturber) -> None:
        j, seed = next_seed()
        zo_step(perturber, loss, j, seed, eps=EPS, lr=LR)

    def ref_step(loss: TimedLoss) -> None:
        reference_step(params, loss, next_seed()[1])

    cases = {"two_forwards": lambda: clocks["two_forwards"].lap(two_forwards)}
    cases |= {c: (lambda c=c, p=p: clocks[c].lap(kit_step, p)) for c, p in perturbers.items()}
    cases["reference_step"] = lambda: clocks["reference_step"].lap(ref_step)
    repeats = 1 if args.quick else args.repeats
    cpu: dict[str, list[float]] = {}
    times = interleaved(cases, repeats, cpu=cpu)
    in_call = {name: clock.laps[-repeats:] for name, clock in clocks.items()}
    in_call_cpu = {name: clock.cpu_laps[-repeats:] for name, clock in clocks.items()}

    # 4) one line per configuration
    fwd, ref = times["two_forwards"], times["reference_step"]
    ref_passes = [t - f for t, f in zip(ref, in_call["reference_step"], strict=True)]
    for c, p in perturbers.items():
        backend, mode, intra = c
        step, step_fwd = times[c], in_call[c]
        passes = [t - f for t, f in zip(step, step_fwd, strict=True)]
        ratio, speedup = paired_ratio(step, step_fwd), paired_ratio(ref, step)
        emit(
            bench="zo_step",
            mode=mode,
            backend=backend,
            pool_intraop="inherit" if intra is None else "set",
            pool_intraop_threads=intra or torch.get_num_threads(),
            step_s=rounded(median(step)),
            two_forwards_s=rounded(median(fwd)),
            reference_step_s=rounded(median(ref)),
            ratio_vs_two_forwards=rounded(ratio, 3),
            speedup_vs_reference=rounded(speedup, 3),
            ratio_vs_separate_forwards=rounded(paired_ratio(step, fwd), 3),
            ratio_vs_two_forwards_cpu=rounded(paired_ratio(cpu[c], in_call_cpu[c]), 3),
            speedup_vs_reference_cpu=rounded(paired_ratio(cpu["reference_step"], cpu[c]), 3),
            forwards_in_step_s=rounded(median(step_fwd)),
            passes_s=rounded(median(passes)),
            reference_passes_s=rounded(median(ref_passes)),
            pass_speedup_vs_reference=rounded(median(ref_passes) / median(passes), 3),
            goal=f"<= {GOAL_RATIO[mode]}x two forwards, >= {GOAL_SPEEDUP}x reference",
            met=ratio <= GOAL_RATIO[mode] and speedup >= GOAL_SPEEDUP,
            threads=torch.get_num_threads(),
            machine=machine(),
            seq_len=seq_len,
            model="tiny-random" if args.quick else "smollm2-135m",
            repeats=repeats,
            samples_s={
                name: [rounded(x, 3) for x in xs]
                for name, xs in (
                    ("step", step),
                    ("forwards_in_step", step_fwd),
                    ("two_forwards", fwd),
                    ("reference_step", ref),
                )
            },
        )
        p.close()


if __name__ == "__main__":
    main()
