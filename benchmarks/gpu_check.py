"""The one prepared GPU check (scripts/gpu_check.sh): everything a first GPU session must measure, in
minutes, into benchmarks/results/gpu-<card>.json + .md.

    scripts/gpu_check.sh                                   # on a CUDA machine (<= 8 min on one GPU)
    TRITON_INTERPRET=1 scripts/gpu_check.sh --reduced      # on a CPU: the same path, tiny sizes

Sections (each timed; a failure is recorded and the next one runs; the report is rewritten after
every section, so a cut-off run still leaves what it measured):

  tests       the `gpu`-marked tests and tests/test_zo_cuda_kernel.py (pytest, pass/fail counts)
  z_backends  the cuda kernel and portable on one weight set (2^27 float32 in 2^20-float chunks):
              seconds per fused pass (draw + axpy, the last with restore and decay) and per z fill;
              weights and z compared bit for bit with native on the CPU; goal: kernel >= 100x
              portable per pass
  snapshot    the round's global weights (1.3B floats; reduced: 4096) saved and restored in device
              memory, pinned host memory and a file: seconds, exact bytes, and the placement `auto`
              chooses on this card (kit/snapshot.py)
  step        kit ZO step (zo_step, auto backend) vs its two forwards vs the reference-style step
              (common.reference_step), on SmolLM2-135M and a random DataJuicer-1.3B shape at 1 x 1024
              tokens, float32 and bfloat16 forwards (+ float16 master weights where the checkout's
              FedKSeedModule has `master_dtype`); goal: step <= 1.1x two forwards at 1.3B bf16
  eval        benchmarks/eval_batched.py: batched greedy generation vs batch-1, identical text;
              goal >= 10x
  paper_run   `fedkseed fit` on the paper's Dolly recipe with a random DataJuicer-1.3B-shaped model
              and a 32,000-id tokenizer built offline (benchmarks/paper_shape.py), 2 rounds, K = 4096,
              tau = --tau local steps: summary.json's time, peak GPU memory, z backend and self-test

--reduced (automatic without CUDA): tiny weights, tiny models (DataJuicer's vocabulary, 2 layers),
16 tokens, 1 repeat, 2 prompts, 1 local step; the cuda backend then runs under Triton's
interpreter when TRITON_INTERPRET=1 (else it is reported as unavailable). Reduced figures check
the path, not speed.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import EPS, LR, machine, reference_step  # noqa: E402

GOALS = {"kernel_vs_portable_per_pass": 100.0, "step_vs_two_forwards_1.3b_bf16": 1.1, "eval_speedup": 10.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(torch.int32).numpy().tobytes())
    return h.hexdigest()[:16]


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu-interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "cpu"


# -- sections ------------------------------------------------------------------------------------
def section_tests(ctx: dict) -> dict:
    marked = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.gpu" in p.read_text()
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the tests choose
    out = {}
    for name, args in (
        ("gpu_marked", ["-m", "gpu", *marked]),
        ("cuda_kernel", ["tests/test_zo_cuda_kernel.py"]),
    ):
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)}
        out[name] = {"returncode": proc.returncode, "summary": last, **counts}
        if proc.returncode not in (0, 5):
            out[name]["tail"] = proc.stdout[-3000:]
    return out


def _weights(numel: int, device: torch.device, drawn_there: bool = False) -> list[torch.Tensor]:
    """Three contiguous float32 tensors (a matrix and two vectors) of `numel` elements in all, drawn
    on the CPU (the same values on every machine) or, `drawn_there`, on `device` (fast)."""
    g = torch.Generator(device if drawn_there else "cpu").manual_seed(0)
    rows = numel // 3 // 256
    shapes = [(rows, 256), (numel // 3 + 77,), (numel - rows * 256 - numel // 3 - 77,)]
    return [torch.randn(s, generator=g, device=g.device).to(device) for s in shapes]


def _passes(pert, seed: int) -> None:
    """The three passes of a ZO step: +eps, -2 eps, restore + update with decay."""
    pert.add(seed, EPS)
    pert.add(seed, -2 * EPS)
    pert.add(seed, -LR * 3.0, decay=LR * 0.01, restore=EPS)


def section_z_backends(ctx: dict) -> dict:
    from kit.zo.perturb import Perturber

    device, reduced = ctx["device"], ctx["reduced"]
    numel, chunk = (3 * 512 + 77, 512) if reduced else (1 << 27, 1 << 20)
    base = _weights(numel, device)
    cpu = [t.to("cpu", copy=True) for t in base]  # base itself stays as it is
    native = Perturber(cpu, chunk_size=chunk, backend="native")
    want_z = digest(native.z(11))
    _passes(native, 11)
    want_w = digest(cpu)
    native.close()
    out = {"numel": numel, "chunk_size": chunk}
    for backend in ("cuda", "portable"):
        params = [t.clone() for t in base]
        try:
            pert = Perturber(params, chunk_size=chunk, backend=backend)
        except Exception as exc:
            out[backend] = {"unavailable": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        first = timed(lambda pert=pert: _passes(pert, 11), device)  # includes the kernel's compile
        row = {
            "equal_native_weights": digest(params) == want_w,
            "equal_native_z": digest(pert.z(11)) == want_z,
        }
        reps = 1 if reduced else (5 if backend == "cuda" else 2)
        row["pass_s"] = median(
            [timed(lambda pert=pert, s=s: pert.add(100 + s, EPS), device) for s in range(reps)]
        )
        row["fill_s"] = median([timed(lambda pert=pert, s=s: pert.z(200 + s), device) for s in range(reps)])
        row["first_step_s"] = round(first, 4)
        row["elements_per_s"] = numel / row["pass_s"]
        out[backend] = row
        pert.close()
        del params
    if "pass_s" in out.get("cuda", {}) and "pass_s" in out.get("portable", {}):
        out["kernel_vs_portable_per_pass"] = out["portable"]["pass_s"] / out["cuda"]["pass_s"]
        if not reduced:
            out["goal_met"] = out["kernel_vs_portable_per_pass"] >= GOALS["kernel_vs_portable_per_pass"]
    return out


def section_snapshot(ctx: dict) -> dict:
    """Seconds to save and restore the round's global weights (1.3B-sized on a GPU) per placement."""
    from kit.snapshot import WeightSnapshot

    device, reduced = ctx["device"], ctx["reduced"]
    numel = 4096 if reduced else 1_345_000_000  # DataJuicer-1.3B's parameter count
    params = _weights(numel, device, drawn_there=True)
    want = digest(params)
    placements = ["device", "pinned host", "disk"] if device.type == "cuda" else ["host", "disk"]
    out = {"numel": numel, "auto_placement": None}
    with tempfile.TemporaryDirectory() as tmp:
        for placement in placements:
            snap = WeightSnapshot(params, "disk" if placement == "disk" else "memory", Path(tmp) / "g.bin")
            snap.placement = placement  # forced: time each, whatever fits
            save_s = timed(snap.save, device)
            for p in params:
                p.add_(1.0)
            restore_s = timed(snap.restore, device)
            out[placement] = {"save_s": save_s, "restore_s": restore_s, "exact": digest(params) == want}
            snap.cleanup()
            del snap
        probe = WeightSnapshot(params, "memory")
        probe.save()
        out["auto_placement"] = probe.placement  # what a run on this card gets for 1.3B
        probe.cleanup()
    return out


def _random_model(config, device: torch.device):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no 5 GB host detour
        model = LlamaForCausalLM(config)
    return model.float().eval().requires_grad_(False)


def _models(ctx: dict):
    from common import datajuicer_config, tiny_config

    from kit.models import load_model

    device, reduced = ctx["device"], ctx["reduced"]
    if reduced:  # tiny random stand-ins with each model's vocabulary
        config = tiny_config()
        yield "tiny (smollm2 vocabulary)", lambda: _random_model(config, device)
        config32k = tiny_config()
        config32k.vocab_size = 32000
        yield "tiny (datajuicer vocabulary)", lambda: _random_model(config32k, device)
        return
    yield "smollm2-135m", lambda: load_model("smollm2-135m", device=device).requires_grad_(False)
    yield "datajuicer-1.3b-shape (random)", lambda: _random_model(datajuicer_config(24), device)


def _measure_step(model, batch: dict, forward_dtype: str, device: torch.device, reps: int) -> dict:
    """Median seconds of two forwards, the kit's ZO step and the reference-style step, interleaved."""
    from kit.federation.seeds import SeedPool
    from kit.module import FedKSeedModule
    from kit.zo.estimator import zo_step
    from kit.zo.perturb import Perturber

    pool = SeedPool(4096, federation_seed=0)
    module = FedKSeedModule(forward_dtype=forward_dtype)
    module.net = model
    module.to(device)
    params = list(model.parameters())
    pert = Perturber(params)

    def loss():
        return module.batch_loss(batch)

    def two_forwards():
        float(loss()), float(loss())

    def ref_loss():
        with torch.no_grad(), module._autocast():
            return model(**batch).loss

    zo_step(pert, loss, 0, pool[0], eps=EPS, lr=LR), two_forwards()  # warm-up: compile, cuBLAS, caches
    t_fwd, t_kit, t_ref = [], [], []
    for r in range(reps):
        t_fwd.append(timed(two_forwards, device))
        t_kit.append(timed(lambda r=r: zo_step(pert, loss, 1 + r, pool[1 + r], eps=EPS, lr=LR), device))
        t_ref.append(timed(lambda r=r: reference_step(params, ref_loss, pool[100 + r]), device))
    pert.close()
    return {
        "parameters": sum(p.numel() for p in params),
        "forward_dtype": forward_dtype,
        "z_backend": pert.backend,
        "two_forwards_s": median(t_fwd),
        "kit_step_s": median(t_kit),
        "reference_step_s": median(t_ref),
        "step_vs_two_forwards": median(t_kit) / median(t_fwd),
        "reference_vs_kit": median(t_ref) / median(t_kit),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def section_step(ctx: dict) -> dict:
    from kit.module import FedKSeedModule

    device, reduced = ctx["device"], ctx["reduced"]
    seq, reps = (16, 1) if reduced else (1024, 5)
    has_master = "master_dtype" in inspect.signature(FedKSeedModule).parameters
    rows = []
    for name, build in _models(ctx):
        model = build()
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, model.config.vocab_size, (1, seq), generator=g).to(device)
        labels = ids.clone()
        labels[:, : seq // 2] = -100  # the loss on the second half, as a prompt + response
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        for master in ["float32", "float16"] if has_master else ["float32"]:
            if master == "float16":  # master weights (and z's axpy) in float16
                model.half()
            for fwd in ("float32", "bfloat16"):
                row = _measure_step(model, batch, fwd, device, reps)
                rows.append({"model": name, "master_dtype": master, "tokens": seq, **row})
        model = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = {"rows": rows, "master_dtype_option": has_master}
    big = [r for r in rows if r["model"].startswith("datajuicer") and r["forward_dtype"] == "bfloat16"]
    if big and not reduced:
        out["goal_met"] = big[0]["step_vs_two_forwards"] <= GOALS["step_vs_two_forwards_1.3b_bf16"]
    return out


def section_eval(ctx: dict) -> dict:
    device, reduced = ctx["device"], ctx["reduced"]
    args = ["--n", "2", "--max-new-tokens", "4"] if reduced else ["--n", "32", "--max-new-tokens", "64"]
    cmd = [sys.executable, str(REPO / "benchmarks" / "eval_batched.py"), *args, "--device", str(device)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"eval_batched.py exited {proc.returncode}: {proc.stderr[-1500:]}")
    out = lines[0]
    if not reduced:
        out["goal_met"] = out["speedup"] >= GOALS["eval_speedup"] and out["identical"] == 1.0
    return out


def section_paper_run(ctx: dict) -> dict:
    import paper_shape
    from common import datajuicer_config, tiny_config

    device, reduced, tau = ctx["device"], ctx["reduced"], ctx["tau"]
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    t0 = time.perf_counter()
    config = tiny_config() if reduced else datajuicer_config(24)
    paper_shape.build(work / "model", vocab=32000, config=config, device=str(device))
    built_s = time.perf_counter() - t0
    run = work / "run"
    cmd = [
        sys.executable, "-m", "kit", "fit",
        "-c", str(REPO / "recipes" / "paper-dolly-alpha0.5-datajuicer-1.3b.yaml"),
        "--model.model", str(work / "model"),
        "--run_dir", str(run),
        "--trainer.max_epochs", "2",
        "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu",
        "--fed.local_steps", str(tau),
        "--fed.progress", "false",
        "--fed.rouge_limit", "4",
        "--data.eval_size", "8",
    ]  # fmt: skip
    if reduced:
        cmd += ["--data.max_length", "64"]
    if device.type == "cuda":
        cmd += ["--model.forward_dtype", "bfloat16"]
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    run_s = time.perf_counter() - t1
    if proc.returncode != 0:
        raise RuntimeError(f"fedkseed fit exited {proc.returncode}: {proc.stderr[-2000:]}")
    summary = json.loads((run / "summary.json").read_text())
    keep = ("rounds", "K", "local_steps", "clients_per_round", "peak_gpu_bytes", "peak_rss_bytes", "z")
    out = {k: summary.get(k) for k in keep}
    out.update(model_build_s=built_s, run_s=run_s, command=" ".join(cmd[1:]))
    out["time_keys"] = {k: v for k, v in summary.items() if "time" in k or k.endswith("_s")}
    return out


SECTIONS = {
    "tests": section_tests,
    "z_backends": section_z_backends,
    "snapshot": section_snapshot,
    "step": section_step,
    "eval": section_eval,
    "paper_run": section_paper_run,
}


# -- report --------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = [
        f"# GPU check: {report['card']}",
        "",
        f"{'REDUCED MODE (path check, not GPU figures). ' if report['reduced'] else ''}"
        f"Machine: {report['machine']}; torch {report['torch']}, triton {report['triton']}; "
        f"command: `{report['command']}`; started {report['started']}.",
        "",
    ]
    for name, sec in report["sections"].items():
        status = "error" if "error" in sec else "ok"
        lines.append(f"## {name} ({status}, {sec.get('seconds', 0):.1f} s)")
        lines.append("")
        body = {k: v for k, v in sec.items() if k not in ("seconds", "traceback")}
        if name == "step" and "rows" in sec.get("result", {}):
            head = (
                "model | forward | master | z | 2 forwards s | kit step s | ref step s | step/2fwd | ref/kit"
            )
            lines.append(f"| {head} |")
            lines.append("|---|---|---|---|---|---|---|---|---|")
            for r in sec["result"]["rows"]:
                lines.append(
                    f"| {r['model']} | {r['forward_dtype']} | {r['master_dtype']} | {r['z_backend']} | "
                    f"{r['two_forwards_s']:.4f} | {r['kit_step_s']:.4f} | {r['reference_step_s']:.4f} | "
                    f"{r['step_vs_two_forwards']:.2f} | {r['reference_vs_kit']:.1f} |"
                )
            lines.append("")
        else:
            lines += ["```json", json.dumps(body, indent=1, default=str)[:4000], "```", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="tiny sizes (automatic without CUDA)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--tau", type=int, default=None, help="paper_run local steps (default 10; reduced 1)")
    parser.add_argument(
        "--budget-s", type=float, default=450, help="skip sections that start later than this"
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reduced = args.reduced or device.type != "cuda"
    ctx = {"device": device, "reduced": reduced, "tau": args.tau or (1 if reduced else 10)}
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    card = card_name(device)
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-") + ("-reduced" if reduced else "")
    report = {
        "card": card,
        "reduced": reduced,
        "machine": f"{machine()}, {platform.node()}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "command": " ".join(["scripts/gpu_check.sh", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "sections": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name in args.sections:
        if time.perf_counter() - start > args.budget_s:
            report["sections"][name] = {"skipped": f"over the {args.budget_s:.0f} s budget"}
            continue
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            report["sections"][name] = {"result": SECTIONS[name](ctx)}
        except Exception as exc:
            report["sections"][name] = {
                "error": f"{type(exc).__name__}: {exc}"[:3000],
                "traceback": traceback.format_exc()[-3000:],
            }
        report["sections"][name]["seconds"] = time.perf_counter() - t0
        report["total_s"] = time.perf_counter() - start
        if "kit.zo.cuda" in sys.modules:  # the kernel's start-up self-test(s) in this process
            report["cuda_self_test"] = {
                d: r.record() for d, r in sys.modules["kit.zo.cuda"].results().items()
            }
        (args.out / f"gpu-{slug}.json").write_text(json.dumps(report, indent=1, default=str))
        (args.out / f"gpu-{slug}.md").write_text(markdown(report))
    print(
        f"[gpu_check] wrote {args.out}/gpu-{slug}.json and .md in {report.get('total_s', 0):.0f} s",
        file=sys.stderr,
    )
    errors = [n for n, s in report["sections"].items() if "error" in s]
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
