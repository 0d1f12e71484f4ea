"""Peak memory of a client's local training, and of loading a 1.3B model, each in a fresh process.

    python benchmarks/memory.py [--steps 2] [--big-layers 24] [--quick]

Each configuration runs in its own subprocess (`--child NAME`), so its peak RSS
(`getrusage(RUSAGE_SELF).ru_maxrss`) belongs to it alone. Every child first imports the runtime
(torch, transformers, Lightning, the kit) and builds the real 1 x 256 batch; that RSS is its
`runtime_bytes`, subtracted from the peak ("net"; `ratio_raw` keeps it on both sides).

    forward     the denominator: weights bytes + one forward's activations, the RSS rise of bare
                no-grad forwards of the training loss (model + response-only CE) on resident weights
    ours_regen  a client as the kit runs it on a CPU: the round's weights in a disk snapshot,
                restore, then --steps ZO steps (Perturber keep_z=False) on SmolLM2-135M at 1 x 256
    ours_kept   the same with keep_z=True (one more copy of the weights, by design)
    reference   a reference-style client: the global model in memory, `deepcopy` of it for the
                client (reference main.py/client.py), non-in-place MeZO steps (common.reference_step)

    ratio = (peak - runtime) / (weights + activations); goal <= 1.1 for ours_regen.

Big model load: a random-weight model of the DataJuicer-1.3B shape (LLaMA, hidden 2048, MLP 5504,
24 layers, 16 heads, vocab 32000), saved once as safetensors (1 GB shards) to a temp dir by one child
and loaded by another with `kit.models.load_model(dir)`; then every weight is read once (the first
forward would do the same). Reports peak RSS / model bytes after the load and after the read;
goal about 1.0-1.2, not 2. --quick: tiny model, 64 tokens, 1 step, a 1-layer big model.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    EPS,
    LR,
    REPO,
    base_parser,
    bench_model,
    data_root,
    datajuicer_config,
    emit,
    machine,
    module_loss,
    param_bytes,
    peak_rss_bytes,
    random_llama,
    real_batch,
    reference_step,
    rounded,
    rss_bytes,
)

GOAL = {"ours_regen": 1.1}
BIG_GOAL = 1.2
RUN_GOAL = 1.1


# -- children: each returns a dict of raw byte counts ----------------------------------------
def runtime(args) -> tuple[dict, int]:
    """Import everything a child uses and build the batch; the RSS after that is the runtime's."""
    import kit.module  # noqa: F401  (Lightning and transformers, as in training)

    batch = real_batch(64 if args.quick else 256)
    gc.collect()
    return batch, rss_bytes()


@torch.no_grad()
def read_all(model: torch.nn.Module) -> None:
    """Read every weight once (safetensors weights are mapped lazily: this makes them resident)."""
    for p in model.parameters():
        p.sum()


def child_forward(args) -> dict:
    batch, base = runtime(args)
    model = bench_model(args.quick)
    loss_fn = module_loss(model, batch)
    read_all(model)
    before, peak_before = rss_bytes(), peak_rss_bytes()
    loss_fn(), loss_fn()
    return {
        "runtime": base,
        "weights": param_bytes(model),
        "before": before,
        "peak_before": peak_before,
        "peak": peak_rss_bytes(),
    }


def child_ours(args, keep_z: bool) -> dict:
    from kit.federation.seeds import SeedPool
    from kit.snapshot import WeightSnapshot
    from kit.zo.estimator import zo_step
    from kit.zo.perturb import Perturber

    batch, base = runtime(args)
    model = bench_model(args.quick)
    params = list(model.parameters())
    loss_fn = module_loss(model, batch)
    pool = SeedPool(4096, federation_seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        # 1) the round's global weights wait on disk; 2) the client starts from them
        snapshot = WeightSnapshot(params, "disk", Path(tmp) / "global.bin")
        snapshot.save()
        snapshot.restore()
        # 3) local training
        perturber = Perturber(params, keep_z=keep_z)
        for j in range(args.steps):
            zo_step(perturber, loss_fn, j, pool[j], eps=EPS, lr=LR)
        perturber.close()
    return {"runtime": base, "weights": param_bytes(model), "peak": peak_rss_bytes()}


def child_reference(args) -> dict:
    batch, base = runtime(args)
    global_model = bench_model(args.quick)
    client = copy.deepcopy(global_model)  # reference: each client trains its own deep copy
    params = list(client.parameters())
    loss_fn = module_loss(client, batch)
    for j in range(args.steps):
        reference_step(params, loss_fn, seed=j + 1)
    return {"runtime": base, "weights": param_bytes(client), "peak": peak_rss_bytes()}


def child_big_save(args) -> dict:
    t0 = time.perf_counter()
    model = random_llama(datajuicer_config(args.big_layers))
    model.save_pretrained(args.dir, max_shard_size="1GB")
    return {"weights": param_bytes(model), "peak": peak_rss_bytes(), "seconds": time.perf_counter() - t0}


def child_big_load(args) -> dict:
    import kit.module  # noqa: F401
    from kit.models import load_model

    base = rss_bytes()
    t0 = time.perf_counter()
    model = load_model(args.dir)
    load_s, peak_load = time.perf_counter() - t0, peak_rss_bytes()
    read_all(model)
    return {
        "runtime": base,
        "weights": param_bytes(model),
        "peak_load": peak_load,
        "peak": peak_rss_bytes(),
        "load_s": load_s,
    }


def run_args(args, run_dir: Path, evaluate: bool) -> list[str]:
    """`fedkseed fit` of the quickstart recipe cut to one round of one client and --steps steps.

    Its eval settings are the quickstart's (48 held-out examples at eval batch 8, Rouge-L on 16);
    without `evaluate`, no Rouge-L (and the child skips the eval-loss passes).
    """
    recipe = REPO / "recipes" / "small-dolly-smollm2.yaml"
    out = ["fit", "-c", str(recipe), "--run_dir", str(run_dir), "--data.data_root", str(data_root())]
    out += ["--trainer.max_epochs", "1", "--fed.fraction", "0.05", "--fed.local_steps", str(args.steps)]
    out += ["--fed.progress", "false", "--fed.rouge_at_end", str(evaluate).lower()]
    if args.quick:
        out += ["--fed.rouge_limit", "2", "--data.eval_size", "8", "--data.max_length", "64"]
    return out


def child_run(args, evaluate: bool) -> dict:
    """A whole short run in this process; `evaluate=False` is its training alone (the eval loss skipped)."""
    import kit.evaluation
    from kit.cli import main as fedkseed

    if not evaluate:
        kit.evaluation.eval_loss = lambda *a, **k: float("nan")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fedkseed(run_args(args, Path(tmp) / "run", evaluate))
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    return {
        "peak": peak_rss_bytes(),
        "seconds": time.perf_counter() - t0,
        "eval_loss_before": summary.get("eval_loss_before"),
        "rougeL": summary.get("rougeL"),
    }


CHILDREN = {
    "run_train": lambda a: child_run(a, evaluate=False),
    "run_whole": lambda a: child_run(a, evaluate=True),
    "forward": child_forward,
    "ours_regen": lambda a: child_ours(a, keep_z=False),
    "ours_kept": lambda a: child_ours(a, keep_z=True),
    "reference": child_reference,
    "big_save": child_big_save,
    "big_load": child_big_load,
}


# -- the driver ----------------------------------------------------------------------------------
def run_child(name: str, args, **extra) -> dict:
    """Run one configuration in a fresh interpreter; its last stdout line is its JSON result."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--steps",
        str(args.steps),
        "--big-layers",
        str(args.big_layers),
    ] + (["--quick"] if args.quick else [])
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"child {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def clients(args, shared: dict) -> None:
    """1) the denominator, weights + one forward's activations; 2) a client's training, three ways."""
    fwd = run_child("forward", args)
    activations = max(fwd["peak"] - fwd["before"], 0)
    denominator = fwd["weights"] + activations

    # 2) a client's local training, three ways
    for name in ("ours_regen", "ours_kept", "reference"):
        r = run_child(name, args)
        ratio = (r["peak"] - r["runtime"]) / denominator
        emit(
            **shared,
            config=name,
            peak_rss_bytes=r["peak"],
            runtime_bytes=r["runtime"],
            weights_bytes=fwd["weights"],
            activation_bytes=activations,
            ratio=rounded(ratio, 3),
            ratio_raw=rounded(r["peak"] / (r["runtime"] + denominator), 3),
            goal=f"<= {GOAL[name]}" if name in GOAL else None,
            met=ratio <= GOAL[name] if name in GOAL else None,
        )


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--steps", type=int, default=2, help="ZO steps per client")
    parser.add_argument("--big-layers", type=int, default=24, help="layers of the 1.3B-shaped model")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--only-run", action="store_true", help="only the whole-run vs training peaks")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.big_layers = 1, 1
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return
    shared = {
        "bench": "memory",
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "model": "tiny-random" if args.quick else "smollm2-135m",
        "steps": args.steps,
    }

    if not args.only_run:
        clients(args, shared)

    # 3) a whole short run (eval loss before and after, Rouge-L at the end) next to its training alone
    train, whole = run_child("run_train", args), run_child("run_whole", args)
    ratio = whole["peak"] / train["peak"]
    emit(
        **shared,
        config="whole_run_vs_training",
        run="quickstart recipe, 1 round, 1 client, --steps steps, eval loss x2, Rouge-L",
        train_peak_rss_bytes=train["peak"],
        whole_peak_rss_bytes=whole["peak"],
        ratio=rounded(ratio, 3),
        train_s=rounded(train["seconds"]),
        whole_s=rounded(whole["seconds"]),
        eval_loss_before=whole["eval_loss_before"],
        rougeL=whole["rougeL"],
        goal=f"<= {RUN_GOAL}",
        met=ratio <= RUN_GOAL,
    )
    if args.only_run:
        return

    # 4) loading a 1.3B-shaped model saved as safetensors
    with tempfile.TemporaryDirectory() as tmp:
        save = run_child("big_save", args, dir=tmp)
        load = run_child("big_load", args, dir=tmp)
    ratio = (load["peak"] - load["runtime"]) / load["weights"]
    shared["model"] = f"random datajuicer-1.3b shape, {args.big_layers} layers"
    emit(
        **shared,
        config="big_model_load",
        weights_bytes=load["weights"],
        runtime_bytes=load["runtime"],
        peak_after_load_bytes=load["peak_load"],
        peak_after_read_bytes=load["peak"],
        ratio_after_load=rounded((load["peak_load"] - load["runtime"]) / load["weights"], 3),
        ratio=rounded(ratio, 3),
        ratio_raw=rounded(load["peak"] / load["weights"], 3),
        load_s=rounded(load["load_s"]),
        save_peak_rss_bytes=save["peak"],
        save_s=rounded(save["seconds"]),
        goal=f"<= {BIG_GOAL}",
        met=ratio <= BIG_GOAL,
    )


if __name__ == "__main__":
    main()
