"""Time the z backends of `Perturber` against a forward pass, on SmolLM2-135M's real parameters.

    .venv/bin/python benchmarks/perturb_backends.py                  # both backends, 2 pool workers
    .venv/bin/python benchmarks/perturb_backends.py --shapes-only    # same shapes as empty tensors

Prints one JSON line per backend (seconds, median of --repeats), measured in the same run as the
forward of the model on 1 x --seq tokens:
  draw_s          a plain draw of z over all weights (chunks spread over the pool, no axpy)
  kept_draw_s     one pass with keep_z=True that draws z (kept copy written) and applies it
  kept_pass_s     one later pass with the kept z (axpy only)
  regen_pass_s    one fused regenerated pass (draw chunk + axpy)
  regen_3pass_s   the three regenerated passes of a step (+eps, -2 eps, +eps fused with the update)
  forward_s       the model's forward at 1 x seq tokens (intra-op threads as at start)
  step_kept_ratio   (kept_draw + 2 kept_pass + 2 forward) / (2 forward)
  step_regen_ratio  (regen_3pass + 2 forward) / (2 forward)
Each backend is measured with torch intra-op threads 1 and 2 during the passes (`by_intra_threads`);
the top-level numbers are from the faster setting (`intra_threads`). Every time also comes as
process CPU seconds (`*_cpu_s`, all threads) and the ratios as `*_ratio_cpu`: on a shared machine
those are what stays comparable between runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit.zo.perturb import Perturber, fill_z  # noqa: E402
from kit.zo.seeding import mix  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds (all threads) of fn()."""
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


# SmolLM2-135M's architecture, for --shapes-only when its config is not cached either
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
)  # fmt: skip


def load(name: str, shapes_only: bool, seq: int):
    """(params, forward or None): the real model if it loads, else zero tensors of its shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from kit.models import load_model, resolve

    if not shapes_only:
        try:
            model = load_model(name)
        except Exception as exc:  # no cached model and no network: fall back to the shapes
            print(f"[bench] could not load {name} ({exc}); timing its shapes only", file=sys.stderr)
        else:
            ids = torch.randint(0, model.config.vocab_size, (1, seq))

            @torch.inference_mode()
            def forward():
                model(input_ids=ids)

            return list(model.parameters()), forward
    try:
        config = AutoConfig.from_pretrained(resolve(name))
    except Exception:
        config = LlamaConfig(**SMOLLM2_135M)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    return [torch.zeros(p.shape) for p in meta.parameters()], None


def plain_draw(pert: Perturber, seed: int, pool: ThreadPoolExecutor) -> None:
    """z drawn chunk by chunk into a reused per-thread buffer, as the passes do, without the axpy."""

    def run(unit):
        i, c, start, size, _ = unit
        buf = pert._scratch()[:size]
        if pert._native is not None:
            pert._native.fill(buf.data_ptr(), size, mix(seed, i, c), pert.distribution)
        else:
            fill_z(buf, pert._generator(seed, i, c), pert.distribution)

    if pert._native is not None:  # as Perturber.add schedules them
        list(pool.map(lambda batch: [run(u) for u in batch], pert._batches))
    else:
        list(pool.map(run, pert.units))


def measure(params, backend: str, workers: int, repeats: int) -> dict:
    eps, out = 1e-3, {}
    with torch.no_grad():
        regen = Perturber(params, backend=backend, num_threads=workers)
        kept = Perturber(params, backend=backend, num_threads=workers, keep_z=True)
        pool = ThreadPoolExecutor(workers)
        regen.add(0, 0.0)  # warm-up: threads, scratch buffers, the native build
        plain_draw(regen, 0, pool)
        seeds = iter(range(1, 1_000_000))

        def record(name: str, fn) -> None:
            out[f"{name}_s"], out[f"{name}_cpu_s"] = timed(fn, repeats)

        record("draw", lambda: plain_draw(regen, next(seeds), pool))

        kept.add(0, eps)  # allocates the kept copy; later seeds reuse it, as in training
        record("kept_draw", lambda: kept.add(next(seeds), eps))
        record("kept_pass", lambda: kept.add(kept._kept_seed, eps))
        record("regen_pass", lambda: regen.add(next(seeds), eps))

        def step():
            seed = next(seeds)
            regen.add(seed, eps)
            regen.add(seed, -2 * eps)
            regen.add(seed, -1e-4, decay=1e-6, restore=eps)

        record("regen_3pass", step)
        for p in (regen, kept):
            p.close()
        pool.shutdown()
    return out


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--shapes-only", action="store_true", help="empty tensors of the model's shapes")
    parser.add_argument("--backends", default="torch,native")
    parser.add_argument("--workers", type=int, default=2, help="Perturber pool workers")
    parser.add_argument("--intra-threads", default="1,2", help="torch threads tried in the passes")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    params, forward = load(args.model, args.shapes_only, args.seq)
    numel = sum(p.numel() for p in params)
    start_threads = torch.get_num_threads()
    fwd = None
    if forward is not None:
        forward()  # warm-up
        fwd, fwd_cpu = timed(forward, args.repeats)
    for backend in args.backends.split(","):
        by_threads = {}
        for t in (int(x) for x in args.intra_threads.split(",")):
            torch.set_num_threads(t)
            try:
                by_threads[t] = measure(params, backend, args.workers, args.repeats)
            finally:
                torch.set_num_threads(start_threads)
        best_t = min(by_threads, key=lambda t: by_threads[t]["regen_3pass_s"])
        row = {"backend": backend, "numel": numel, "workers": args.workers, "intra_threads": best_t}
        row.update({k: round(v, 4) for k, v in by_threads[best_t].items()})
        if fwd is not None:
            b = by_threads[best_t]
            row["forward_s"] = round(fwd, 4)
            row["forward_cpu_s"] = round(fwd_cpu, 4)
            row["forward_threads"] = start_threads
            row["step_kept_ratio"] = round((b["kept_draw_s"] + 2 * b["kept_pass_s"] + 2 * fwd) / (2 * fwd), 3)
            row["step_regen_ratio"] = round((b["regen_3pass_s"] + 2 * fwd) / (2 * fwd), 3)
            # the same from CPU seconds: robust to other processes competing for the cores
            kept_cpu = b["kept_draw_cpu_s"] + 2 * b["kept_pass_cpu_s"]
            row["step_kept_ratio_cpu"] = round((kept_cpu + 2 * fwd_cpu) / (2 * fwd_cpu), 3)
            row["step_regen_ratio_cpu"] = round((b["regen_3pass_cpu_s"] + 2 * fwd_cpu) / (2 * fwd_cpu), 3)
        row["ns_per_element_cpu"] = round(by_threads[best_t]["regen_pass_cpu_s"] / numel * 1e9, 3)
        row["by_intra_threads"] = {t: {k: round(v, 4) for k, v in r.items()} for t, r in by_threads.items()}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
