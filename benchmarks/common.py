"""Shared helpers of the benchmarks: machine facts, interleaved timing, the real batch, models, memory.

    python benchmarks/common.py   # smoke check: the machine line and the real 256-token batch

Timing on a shared CPU is noisy, so every benchmark times its candidates *interleaved* in one
process (A, B, A, B, ...) and reports medians; a ratio is the median of the per-round ratios, so
each pair shares whatever load the machine had at that moment. Process CPU seconds are recorded
alongside (`*_cpu` fields): other processes inflate them much less than wall time.

The reference FedKSeed step is re-implemented here (and only here), faithfully: global reseeding,
one full-size `torch.normal` draw per parameter per pass, non-in-place `p.data = p.data + ...`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SMOLLM2 = "smollm2-135m"
SEQ_LEN = 256
EPS, LR = 5e-4, 3e-7  # the reference's zo_eps and learning rate
DOWNLOAD_BITS_PER_S = 100e6  # the "100 Mbit/s" link of the comparisons


# -- machine and output ------------------------------------------------------------------------
def machine() -> str:
    """`uname -m`, `nproc` and the CPU model, e.g. "x86_64, 2 cores, AMD EPYC"."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {model}"


def emit(**fields) -> None:
    """Print one JSON result line (the benchmarks' only stdout)."""
    print(json.dumps(fields), flush=True)


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the flags every benchmark has: --quick, --repeats."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="fast smoke run: tiny model, one repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurement rounds (>= 3)")
    return parser


# -- timing ------------------------------------------------------------------------------------
def interleaved(
    cases: dict[str, Callable[[], object]], repeats: int, warmup: bool = True, cpu: dict | None = None
) -> dict[str, list[float]]:
    """Wall seconds of each case, run round-robin `repeats` times (after one untimed warm-up round).

    With `cpu`, also fills cpu[name] with the process CPU seconds (all threads) of each run: what
    other processes on the machine disturb least.
    """
    if warmup:
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for name in cases if cpu is not None else ():
        cpu[name] = []
    for _ in range(repeats):
        for name, fn in cases.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            if cpu is not None:
                cpu[name].append(time.process_time() - c0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num_i / den_i (each pair ran back to back, under the same load)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def rounded(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


# -- data --------------------------------------------------------------------------------------
def data_root() -> Path:
    """`$FEDKSEED_DATA_ROOT`, else the shared data next to the repository."""
    from kit.paths import data_root as configured

    root = configured() or SHARED_DATA
    if not (root / "dolly").is_dir():
        sys.exit(f"Dolly not found under {root}; set FEDKSEED_DATA_ROOT to the data root")
    return root


def real_batch(seq_len: int = SEQ_LEN, min_response: int = 64) -> dict[str, torch.Tensor]:
    """One real Dolly example as a 1 x seq_len batch, labels on its response tokens only.

    The first record (file order) that fills the window, truncated to seq_len (every position is a
    real token: no padding to skip), with at least `min_response` response tokens inside it.
    """
    from kit.data.dolly import dolly_example, load_dolly
    from kit.data.tokenize import IGNORE_INDEX, collate, encode_each
    from kit.models import load_tokenizer

    tokenizer = load_tokenizer(SMOLLM2)
    records = load_dolly(data_root())
    need = min(min_response, seq_len // 4)
    for start in range(0, len(records), 256):
        chunk = [dolly_example(r) for r in records[start : start + 256]]
        for item in encode_each(tokenizer, chunk, seq_len):
            full = item is not None and len(item["input_ids"]) == seq_len
            if full and (item["labels"] != IGNORE_INDEX).sum() >= need:
                return collate([item], tokenizer.pad_token_id)
    raise RuntimeError(f"no Dolly record fills {seq_len} tokens with {need} response tokens")


# -- models ------------------------------------------------------------------------------------
def smollm2_config():
    """SmolLM2-135M's own config (from the kit's cached copy)."""
    from transformers import AutoConfig

    from kit.models import resolve

    return AutoConfig.from_pretrained(resolve(SMOLLM2))


def tiny_config():
    """A 2-layer Llama with SmolLM2's vocabulary (real token ids fit): ~3.3M parameters, for --quick."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )


def datajuicer_config(layers: int = 24):
    """The paper's DataJuicer-1.3B shape (LLaMA: hidden 2048, MLP 5504, 16 heads, vocab 32000)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5504,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
    )


def random_llama(config, seed: int = 0) -> torch.nn.Module:
    """A float32 LlamaForCausalLM with random weights, eval mode, no autograd."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    return model.requires_grad_(False)


def bench_model(quick: bool) -> torch.nn.Module:
    """The real SmolLM2-135M (float32), or the tiny random Llama under --quick."""
    if quick:
        return random_llama(tiny_config())
    from kit.models import load_model

    return load_model(SMOLLM2).requires_grad_(False)


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def module_loss(model: torch.nn.Module, batch: dict) -> Callable[[], torch.Tensor]:
    """The training loss exactly as the kit computes it: `FedKSeedModule.batch_loss` on `model`."""
    from kit.module import FedKSeedModule

    module = FedKSeedModule()
    module.net = model  # a plain attribute until configure_model; batch_loss only reads it
    return lambda: module.batch_loss(batch)


def reference_loss(model: torch.nn.Module, batch: dict) -> Callable[[], torch.Tensor]:
    """The reference's training loss: Hugging Face's `model(**batch).loss` (LM head on every position)."""

    def loss() -> torch.Tensor:
        with torch.no_grad():
            return model(**batch).loss

    return loss


# -- the kit's Perturber backends ---------------------------------------------------------------
def add_backend_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        nargs="+",
        default=["torch", "native"],
        choices=["torch", "native"],
        help="Perturber z backends to time (those this checkout lacks are skipped)",
    )


def backends(requested: list[str], bench: str) -> dict[str, dict]:
    """Perturber kwargs of each requested backend that runs here; a `skipped` line for the others."""
    from kit.zo.perturb import Perturber

    has_option = "backend" in inspect.signature(Perturber).parameters
    out = {}
    for backend in requested:
        if backend != "torch" and not has_option:
            emit(bench=bench, backend=backend, skipped="this Perturber has no `backend` option")
            continue
        options = {"backend": backend} if has_option else {}
        try:
            Perturber([torch.zeros(4)], **options).close()
        except Exception as err:  # e.g. the native kernels cannot be built here
            emit(bench=bench, backend=backend, skipped=f"{type(err).__name__}: {err}")
            continue
        out[backend] = options
    return out


def make_perturber(params: list[torch.Tensor], options: dict, pool_intraop: int | None = None, **kw):
    """A Perturber whose pool workers use `pool_intraop` torch threads each (None: inherit the current).

    A worker thread fixes its intra-op thread count at its first torch op (ATen initialises it once
    per thread), so a later `torch.set_num_threads` in the main thread no longer reaches the pool.
    With `pool_intraop`, the workers are started under that setting by one zero-alpha pass.
    """
    from kit.zo.perturb import Perturber

    outer = torch.get_num_threads()
    perturber = Perturber(params, num_threads=outer, **options, **kw)
    if pool_intraop is not None:
        torch.set_num_threads(pool_intraop)
        try:
            perturber.add(0, 0.0)  # theta + 0 * z: leaves the weights as they are
        finally:
            torch.set_num_threads(outer)
    return perturber


# -- the reference (optimizers/mezo_optimizer.py: MeZOFramework) --------------------------------
def reference_perturb(params: list[torch.Tensor], seed: int, scaling_factor: float, eps: float = EPS) -> None:
    """Reference `_zo_perturb_parameters`: reseed the global RNG, draw each z whole, non-in-place add."""
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
        p.data = p.data + scaling_factor * eps * z


def reference_update(params: list[torch.Tensor], seed: int, grad: float, lr: float = LR) -> None:
    """Reference `zo_update(seed, grad)` with weight decay 0: a 4th full regeneration of z."""
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
        p.data = p.data - lr * (grad * z)


@torch.no_grad()
def reference_step(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], seed: int) -> float:
    """Reference `zo_step`: +1, -2, +1 perturbations around two forwards, then the update."""
    reference_perturb(params, seed, 1)
    loss1 = float(loss_fn())
    reference_perturb(params, seed, -2)
    loss2 = float(loss_fn())
    reference_perturb(params, seed, 1)
    grad = (loss1 - loss2) / (2 * EPS)
    reference_update(params, seed, grad)
    return grad


# -- memory ------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Current resident set size (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    b = real_batch()
    emit(
        machine=machine(),
        threads=torch.get_num_threads(),
        batch_shape=list(b["input_ids"].shape),
        response_tokens=int((b["labels"] != -100).sum()),
        attended=int(b["attention_mask"].sum()),
    )
