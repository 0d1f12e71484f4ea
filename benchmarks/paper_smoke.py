"""A paper-scale smoke on a CPU (not CI): one FedKSeed round on a random DataJuicer-1.3B-shaped model.

    python benchmarks/paper_smoke.py [--tau 2] [--fraction 0.05] [--max-length 256] [--work DIR]

1. benchmarks/paper_shape.py builds the model directory offline (random weights, 24 layers, a
   32,000-id byte-level BPE tokenizer trained on Dolly), once per --work dir.
2. `fedkseed fit` on recipes/paper-dolly-alpha0.5-datajuicer-1.3b.yaml with it, on the CPU: one
   round, tau = --tau local steps, K = 4096, --fraction of the 200 clients, --max-length tokens,
   eval loss on 2 held-out examples, no Rouge-L. Its summary.json gives the wall time and peak RSS.
3. A child process measures the denominator and the snapshot: the RSS of the loaded weights, the
   peak rise of one no-grad training-loss forward at 1 x --max-length tokens (activations), and the
   seconds of a disk snapshot's save and restore (what every client of a round pays on a CPU) and of
   a host-memory one.

Prints one JSON line. Needs ~11 GB of RAM and minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def child(model_dir: Path, max_length: int) -> dict:
    """Weights, activations and snapshot costs, measured in this (fresh) process."""
    import torch
    from common import peak_rss_bytes, rss_bytes

    from kit.models import load_model
    from kit.module import FedKSeedModule
    from kit.snapshot import WeightSnapshot

    torch.set_grad_enabled(False)
    before = rss_bytes()
    model = load_model(str(model_dir)).requires_grad_(False)
    params = list(model.parameters())
    for p in params:  # read every weight (mapped safetensors pages fault in on first read)
        p.sum()
    weights_rss = rss_bytes() - before
    module = FedKSeedModule()
    module.net = model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, max_length), generator=g)
    labels = ids.clone()
    labels[:, : max_length // 2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    base = max(rss_bytes(), peak_rss_bytes())
    t0 = time.perf_counter()
    float(module.batch_loss(batch))
    forward_s = time.perf_counter() - t0
    activations = max(0, peak_rss_bytes() - base)
    out = {
        "parameters": sum(p.numel() for p in params),
        "weights_bytes": sum(p.numel() * p.element_size() for p in params),
        "weights_rss_bytes": weights_rss,
        "forward_s": forward_s,
        "activations_bytes": activations,
    }
    with tempfile.TemporaryDirectory(dir=model_dir.parent) as tmp:
        snap = WeightSnapshot(params, "disk", Path(tmp) / "g.bin")
        t0 = time.perf_counter()
        snap.save()
        out["disk_snapshot_save_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        snap.restore()
        out["disk_snapshot_restore_s"] = time.perf_counter() - t0
        snap.cleanup()
    mem = WeightSnapshot(params, "memory")
    t0 = time.perf_counter()
    mem.save()
    out["memory_snapshot_save_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mem.restore()
    out["memory_snapshot_restore_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tau", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.05, help="of the 200 clients (0.05: 10)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedkseed-paper-smoke")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = args.work / "model"
    if args.child:
        print(json.dumps(child(model_dir, args.max_length)), flush=True)
        return
    import paper_shape

    t0 = time.perf_counter()
    if not (model_dir / "config.json").is_file():
        paper_shape.build(model_dir, layers=24)
    build_s = time.perf_counter() - t0
    run = args.work / f"run-{int(time.time())}"
    cmd = [
        sys.executable, "-m", "kit", "fit",
        "-c", str(REPO / "recipes" / "paper-dolly-alpha0.5-datajuicer-1.3b.yaml"),
        "--model.model", str(model_dir),
        "--run_dir", str(run),
        "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "1",
        "--fed.local_steps", str(args.tau),
        "--fed.fraction", str(args.fraction),
        "--fed.progress", "false",
        "--fed.rouge_at_end", "false",
        "--data.max_length", str(args.max_length),
        "--data.eval_size", "2",
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    run_s = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"fedkseed fit exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    summary = json.loads((run / "summary.json").read_text())
    measured = subprocess.run(
        [sys.executable, __file__, "--child", "--work", str(args.work), "--max-length", str(args.max_length)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    parts = json.loads(measured.stdout.strip().splitlines()[-1])
    denominator = parts["weights_bytes"] + parts["activations_bytes"]
    result = {
        "bench": "paper_smoke",
        "model_build_s": round(build_s, 1),
        "run_s": round(run_s, 1),
        "summary": {k: summary.get(k) for k in ("rounds", "K", "local_steps", "clients_per_round", "z")},
        "wall_time_s": summary.get("wall_time_s"),
        "mean_step_time_s": summary.get("mean_step_time_s"),
        "peak_rss_bytes": summary.get("peak_rss_bytes"),
        **parts,
        "peak_rss_vs_weights": summary["peak_rss_bytes"] / parts["weights_bytes"],
        "peak_rss_vs_weights_plus_activations": summary["peak_rss_bytes"] / denominator,
        "command": " ".join(cmd[1:]),
        "max_length": args.max_length,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
