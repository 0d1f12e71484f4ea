"""`fedkseed export` and `fedkseed materialize`: a FedKSeed fine-tune as a seed file and back.

fedkseed export --run runs/quickstart --out quickstart.seeds
fedkseed materialize quickstart.seeds --out models/quickstart
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kit.cli_errors import one_line_argparse, run_guarded


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="fedkseed export", description="Write a run's fine-tune as a seed file."
    )
    parser.add_argument("--run", type=Path, required=True, help="a fedkseed / fedkseed-pro run directory")
    parser.add_argument("--out", type=Path, required=True, help="the seed file to write (FILE.seeds)")
    parser.add_argument(
        "--ckpt", type=Path, default=None, help="this checkpoint instead of checkpoints/last.ckpt"
    )
    args = one_line_argparse(parser, "fedkseed export").parse_args(argv)
    from kit.finetune import export_run

    out = run_guarded("fedkseed export", export_run, args.run, args.out, args.ckpt)
    print(f"[kit] wrote {out} ({out.stat().st_size:,} bytes)", flush=True)


def materialize_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="fedkseed materialize",
        description="Rebuild a seed file's fine-tune as a Hugging Face model folder.",
    )
    parser.add_argument("seed_file", type=Path, help="a seed file written by `fedkseed export`")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument(
        "--model", default=None, help="the base model's location (default: the id in the file)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the replay (same bits on any)")
    args = one_line_argparse(parser, "fedkseed materialize").parse_args(argv)
    from kit.finetune import materialize

    digest = run_guarded(
        "fedkseed materialize", materialize, args.seed_file, args.out, args.model, args.device
    )
    print(f"[kit] wrote {args.out} (weights sha256 {digest}, verified)", flush=True)
