"""Command line of the zero-shot eval: `python -m eval` and `fedkseed eval`.

python -m eval --model smollm2-135m --suite ni --limit 20 --data-root ../shared/data --out runs/eval
fedkseed eval --run runs/quickstart      # a run's final global model, rebuilt, on the run's held-out set
fedkseed eval --run runs/x --ckpt runs/x/checkpoints/last.ckpt
fedkseed eval --run runs/x --round 10    # FedKSeed, DeComFL, ...: the global model after round 10, by replay
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from eval.evaluate import evaluate
from eval.run_settings import eval_settings
from eval.suites import SUITES
from kit.errors import UsageError
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
        help="a run directory: evaluate its global model (rebuilt by replay) on the held-out set its loop "
        "scored (the run's dataset, held-out category, eval_size, data seed and rouge_limit; an option "
        "given here wins)",
    )
    add(
        "--ckpt", type=Path, default=None, help="with --run: this checkpoint instead of checkpoints/last.ckpt"
    )
    add(
        "--round",
        type=int,
        default=None,
        help="with --run: the global model after this round (0: the base model; earlier rounds for a method "
        "whose checkpoint holds its rounds' downlinks: FedKSeed, Pro, DeComFL, FeedSign), digest-checked",
    )
    add("--dtype", default="float32", choices=sorted(DTYPES), help="weights dtype")
    add("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    # defaults: the run's with --run, else eval.run_settings.STANDALONE (unset options stay off `args`)
    unset = argparse.SUPPRESS
    add(
        "--suite",
        action="append",
        choices=SUITES,
        default=unset,
        help="suite to run; repeat for several (default: the run's with --run, else all)",
    )
    add("--data-root", default=unset, help=f"folder of the data (default ${DATA_ROOT_ENV}, else the Hub)")
    add(
        "--limit",
        type=int,
        default=unset,
        help="at most this many examples per suite, tasks in turn (default: the run's rouge_limit, else all)",
    )
    add(
        "--dolly-size",
        type=_size,
        default=unset,
        help="held-out Dolly sample size, or 'all' (default: the run's eval_size, else 200)",
    )
    add(
        "--heldout-category",
        default=unset,
        help="held-out Dolly category (default: the run's, else summarization)",
    )
    add(
        "--seed",
        type=int,
        default=unset,
        help="seed of the eval samples (default: the run's data seed, else 42)",
    )
    add("--max-new-tokens", type=int, default=128, help="generated tokens per example, at most")
    add("--batch-size", type=int, default=None, help="first generation batch size tried (halved on OOM)")
    add("--out", type=Path, default=None, help="folder for generations_<suite>.jsonl and rouge_<suite>.json")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser


# (run dir, checkpoint or None, device, round or None) -> (model, tokenizer): the kit's rebuild, passed
# in by `fedkseed eval` (kit/cli.py), so this package never imports the kit's training side
RunLoader = Callable[[Path, Path | None, str, int | None], tuple]


def run_eval(args: argparse.Namespace, load_run: RunLoader | None = None) -> dict[str, dict]:
    """Load the model named by `args`, evaluate it, print one line per suite and return the results."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.round is not None and args.run is None:
        raise UsageError(f"--round {args.round} picks a round of a run: give the run too (--run DIR)")
    if args.run is not None:
        if load_run is None:
            raise SystemExit("python -m eval: --run rebuilds a run's model: use `fedkseed eval --run DIR`")
        model, tokenizer = load_run(args.run, args.ckpt, device, args.round)
    else:
        model, tokenizer = load_model(args.model, args.dtype, device), load_tokenizer(args.model)
    names = {"suite": "suites", "data_root": "data_root", "limit": "limit", "dolly_size": "dolly_size"}
    names |= {"heldout_category": "heldout_category", "seed": "seed"}
    given = {key: getattr(args, option) for option, key in names.items() if hasattr(args, option)}
    settings = eval_settings(args.run, given)
    results = evaluate(
        model,
        tokenizer,
        settings["suites"],
        data_root=data_root(settings["data_root"]),
        limit=settings["limit"],
        seed=settings["seed"],
        out_dir=args.out,
        dolly_size=settings["dolly_size"],
        heldout_category=settings["heldout_category"],
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    keys = ("rougeL", "rougeL_paper", "rougeL_paper_recursion_errors", "n")
    for name, r in results.items():
        errors = r["rougeL_paper_recursion_errors"]
        overflow = f", {errors} scored 0 on its RecursionError" if errors else ""
        print(
            f"[eval] {name}: Rouge-L {r['rougeL']:.2f} (paper's scorer {r['rougeL_paper']:.2f}{overflow}) "
            f"over {r['n']} examples",
            flush=True,
        )
    print(json.dumps({name: {k: r[k] for k in keys} for name, r in results.items()}), flush=True)
    return results


def main(argv: list[str] | None = None, load_run: RunLoader | None = None) -> None:
    """Parse `argv` (default: the process arguments) and run the eval (`load_run`: for `--run`)."""
    from kit.cli_errors import one_line_argparse, run_guarded

    parser = argparse.ArgumentParser(prog="fedkseed eval", description="Zero-shot Rouge-L of a causal LM.")
    one_line_argparse(parser, "fedkseed eval")
    run_guarded("fedkseed eval", run_eval, add_eval_arguments(parser).parse_args(argv), load_run)
