"""How much of a FedKSeed update survives float16 master weights, and what it does to the eval loss.

    python benchmarks/master_precision.py survival            # one per-seed update on SmolLM2-135M
    python benchmarks/master_precision.py run --run DIR        # each round of a float16 run, replayed
    python benchmarks/master_precision.py curves --out DIR     # quickstart, float32 vs float16 master

survival: the weights of the embedded SmolLM2-135M rounded to float16 move by one per-seed update
theta - lr * (g * z) with the reference's float16 arithmetic (`Perturber.update`, kit/zo/master.py),
for lr in {quickstart 2e-5, paper 3e-7} and |g| in {1, 10, 100}, several seeds. Reported: the
fraction of weights that changed, and ||actual change|| / ||lr g z|| (the float32 update).
run: a float16-master run's downlinks are replayed round by round on its theta_0; each round's actual
change of the global weights is compared with the float32 update of the same G (norm ratio, cosine,
fraction changed).
curves: `fedkseed fit -c recipes/small-dolly-smollm2.yaml` (the quickstart until 2026-12-04), shortened
(--rounds), once per (lr, master dtype), same seeds; prints each run's eval loss per round (the runs stay in
--out for `run`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine  # noqa: E402

from kit.federation.seeds import SeedPool  # noqa: E402
from kit.federation.sync import apply_scalars  # noqa: E402
from kit.models import load_model  # noqa: E402
from kit.zo.perturb import Perturber  # noqa: E402

QUICKSTART_LR, PAPER_LR = 2e-5, 3e-7


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in params])


def survival(model: str, lrs: list[float], grads: list[float], seeds: int) -> None:
    """One per-seed update of the float16 weights, against the float32 update lr * g * z."""
    net = load_model(model, dtype="float16")
    params = list(net.parameters())
    start = [p.detach().clone() for p in params]
    start32 = _flat(start)
    perturber = Perturber(params)
    for lr in lrs:
        for g in grads:
            changed, ratio = [], []
            for s in range(seeds):
                seed = 1000 + s
                z = torch.cat([t.reshape(-1) for t in perturber.z(seed)])
                t0 = time.perf_counter()
                perturber.update(seed, lr, g)
                seconds = time.perf_counter() - t0
                delta = _flat(params) - start32
                intended = (lr * g) * z
                changed.append(float((delta != 0).double().mean()))
                ratio.append(float(delta.double().norm() / intended.double().norm()))
                for p, p0 in zip(params, start, strict=True):
                    p.copy_(p0)
            emit(
                benchmark="master_precision.survival",
                model=model,
                lr=lr,
                abs_g=g,
                seeds=seeds,
                changed_fraction=_spread(changed),
                norm_ratio=_spread(ratio),
                pass_seconds=round(seconds, 2),
                machine=machine(),
            )
    perturber.close()


def _spread(values: list[float]) -> dict:
    return {
        "mean": round(float(np.mean(values)), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def run_survival(run_dir: Path) -> None:
    """Each round of a float16-master run: the actual change of the global weights vs the float32
    update of the same downlink."""
    from kit.rebuild import read_run

    hp, settings, state, _ = read_run(run_dir)
    if (state.get("master_dtype") or "float32") == "float32":
        raise SystemExit(f"{run_dir} trained float32 master weights: give a float16 run")
    net = load_model(hp["model"], dtype=state["master_dtype"])
    params = list(net.parameters())
    perturber = Perturber(params)
    pool = SeedPool(settings.num_seeds, settings.seed)
    theta0 = _flat(params)
    total = np.zeros(settings.num_seeds, dtype=np.float64)  # the reference server's seed_pool sums
    whole = [torch.zeros(p.shape, dtype=torch.float32) for p in params]  # float32: every round's update
    for r, g in enumerate(state["method_state"]["downlinks"], start=1):
        g = g.numpy()
        total += g.astype(np.float64)
        apply_scalars(Perturber(whole), pool, g, hp["lr"])
        before = _flat(params)
        apply_scalars(perturber, pool, g, hp["lr"])
        actual = _flat(params) - before
        zero = [torch.zeros(p.shape, dtype=torch.float32) for p in params]
        apply_scalars(Perturber(zero), pool, g, hp["lr"])  # the float32 update, alone
        intended = _flat(zero)
        emit(
            benchmark="master_precision.run",
            run=str(run_dir),
            lr=hp["lr"],
            round=r,
            seeds_touched=int(np.count_nonzero(g)),
            abs_G_median=round(float(np.median(np.abs(g[g != 0]))), 4) if np.any(g) else 0.0,
            changed_fraction=round(float((actual != 0).double().mean()), 4),
            norm_ratio=round(float(actual.double().norm() / intended.double().norm()), 4),
            cosine=round(
                float(torch.nn.functional.cosine_similarity(actual.double(), intended.double(), 0)), 4
            ),
            machine=machine(),
        )
    # the whole run: the kit's incremental float16 server vs the reference's rebuild from theta_0 with
    # every seed's summed scalars (server.py update_global_model_by_seed_pool), vs the float32 update
    kit = _flat(params) - theta0
    for p, p0 in zip(params, _unflat(theta0, params), strict=True):
        p.copy_(p0)
    apply_scalars(perturber, pool, total, hp["lr"])  # one pass per seed, summed scalars
    reference = _flat(params) - theta0
    intended = _flat(whole)
    cos = torch.nn.functional.cosine_similarity
    emit(
        benchmark="master_precision.run_total",
        run=str(run_dir),
        lr=hp["lr"],
        rounds=len(state["method_state"]["downlinks"]),
        seeds_touched=int(np.count_nonzero(total)),
        kit_norm_ratio=round(float(kit.double().norm() / intended.double().norm()), 4),
        reference_norm_ratio=round(float(reference.double().norm() / intended.double().norm()), 4),
        kit_changed_fraction=round(float((kit != 0).double().mean()), 4),
        reference_changed_fraction=round(float((reference != 0).double().mean()), 4),
        kit_cosine=round(float(cos(kit.double(), intended.double(), 0)), 4),
        reference_cosine=round(float(cos(reference.double(), intended.double(), 0)), 4),
        kit_vs_reference_cosine=round(float(cos(kit.double(), reference.double(), 0)), 4),
        machine=machine(),
    )


def _unflat(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, pos = [], 0
    for p in like:
        out.append(flat[pos : pos + p.numel()].view(p.shape).to(p.dtype))
        pos += p.numel()
    return out


def curves(out: Path, lrs: list[float], dtypes: list[str], rounds: int, extra: list[str]) -> None:
    """The quickstart, shortened to `rounds`, once per (lr, master dtype); eval loss every round."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for lr in lrs:
        for dtype in dtypes:
            run = out / f"lr{lr:g}-{dtype}"
            if (
                not (run / "summary.json").is_file()
                or not json.loads((run / "summary.json").read_text())["finished"]
            ):
                recipe = REPO / "recipes" / "small-dolly-smollm2.yaml"
                cmd = [sys.executable, "-m", "kit", "fit", "-c", str(recipe)]
                cmd += ["--run_dir", str(run), "--model.lr", str(lr), "--model.master_dtype", dtype]
                cmd += [
                    "--trainer.max_epochs",
                    str(rounds),
                    "--fed.eval_every",
                    "1",
                    "--fed.rouge_at_end",
                    "false",
                ]
                cmd += ["--fed.progress", "false", *extra]
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            s = json.loads((run / "summary.json").read_text())
            emit(
                benchmark="master_precision.curves",
                lr=lr,
                master_dtype=dtype,
                rounds=rounds,
                eval_loss_before=round(s["eval_loss_before"], 5),
                eval_loss_per_round=[round(x, 5) for x in s["eval_loss_per_round"]],
                train_loss_per_round=[round(x, 5) for x in s["train_loss_per_round"]],
                skipped_steps=s["skipped_steps"],
                wall_time_s=round(s["wall_time_s"], 1),
                run=str(run),
                machine=machine(),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("survival")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lr", type=float, nargs="+", default=[QUICKSTART_LR, PAPER_LR])
    p.add_argument("--g", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    p.add_argument("--seeds", type=int, default=3)
    p = sub.add_parser("run")
    p.add_argument("--run", type=Path, required=True)
    p = sub.add_parser("curves")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lr", type=float, nargs="+", default=[QUICKSTART_LR, PAPER_LR])
    p.add_argument("--dtype", nargs="+", default=["float32", "float16"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("extra", nargs="*", help="more `fedkseed fit` flags (after --)")
    args = parser.parse_args()
    with torch.no_grad():
        if args.part == "survival":
            survival(args.model, args.lr, args.g, args.seeds)
        elif args.part == "run":
            run_survival(args.run)
        else:
            curves(args.out, args.lr, args.dtype, args.rounds, args.extra)


if __name__ == "__main__":
    main()
