"""Command line of the zero-shot eval: `python -m eval` and `fedkseed eval`.

python -m eval --model smollm2-135m --suite ni --limit 20 --data-root ../shared/data --out runs/eval
fedkseed eval --run runs/quickstart --suite dolly      # a run's final global model, rebuilt
fedkseed eval --run runs/x --ckpt runs/x/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from eval.evaluate import evaluate
from eval.suites import SUITES
from kit.models import DTYPES, load_model, load_tokenizer
from kit.paths import DATA_ROOT_ENV, data_root


def _size(value: str) -> int | None:
    return None if value == "all" else int(value)


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the eval options to `parser` (shared by `python -m eval` and `fedkseed eval`)."""
    add = parser.add_argument
    add("--model", default="smollm2-135m", help="embedded name, Hub id or local model folder")
    add(
        "--run",
        type=Path,
        default=None,
        help="a run directory: evaluate its global model (rebuilt by replay)",
    )
    add(
        "--ckpt", type=Path, default=None, help="with --run: this checkpoint instead of checkpoints/last.ckpt"
    )
    add("--dtype", default="float32", choices=sorted(DTYPES), help="weights dtype")
    add("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    add("--suite", action="append", choices=SUITES, help="suite to run; repeat for several (default: all)")
    add("--data-root", default=None, help=f"folder of the data (default ${DATA_ROOT_ENV}, else the Hub)")
    add("--limit", type=int, default=None, help="at most this many examples per suite, tasks taken in turn")
    add("--dolly-size", type=_size, default=200, help="held-out Dolly sample size, or 'all'")
    add("--seed", type=int, default=42, help="seed of the eval samples")
    add("--max-new-tokens", type=int, default=128, help="generated tokens per example, at most")
    add("--batch-size", type=int, default=None, help="first generation batch size tried (halved on OOM)")
    add("--out", type=Path, default=None, help="folder for generations_<suite>.jsonl and rouge_<suite>.json")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser


# (run dir, checkpoint or None, device) -> (model, tokenizer): the kit's rebuild, passed in by
# `fedkseed eval` (kit/cli.py), so this package never imports the kit's training side
RunLoader = Callable[[Path, Path | None, str], tuple]


def run_eval(args: argparse.Namespace, load_run: RunLoader | None = None) -> dict[str, dict]:
    """Load the model named by `args`, evaluate it, print one line per suite and return the results."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.run is not None:
        if load_run is None:
            raise SystemExit("python -m eval: --run rebuilds a run's model: use `fedkseed eval --run DIR`")
        model, tokenizer = load_run(args.run, args.ckpt, device)
    else:
        model, tokenizer = load_model(args.model, args.dtype, device), load_tokenizer(args.model)
    results = evaluate(
        model,
        tokenizer,
        args.suite or SUITES,
        data_root=data_root(args.data_root),
        limit=args.limit,
        seed=args.seed,
        out_dir=args.out,
        dolly_size=args.dolly_size,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    for name, result in results.items():
        print(f"[eval] {name}: Rouge-L {result['rougeL']:.2f} over {result['n']} examples", flush=True)
    print(json.dumps({name: {"rougeL": r["rougeL"], "n": r["n"]} for name, r in results.items()}), flush=True)
    return results


def main(argv: list[str] | None = None, load_run: RunLoader | None = None) -> None:
    """Parse `argv` (default: the process arguments) and run the eval (`load_run`: for `--run`)."""
    parser = argparse.ArgumentParser(prog="fedkseed eval", description="Zero-shot Rouge-L of a causal LM.")
    run_eval(add_eval_arguments(parser).parse_args(argv), load_run)
