"""`python -m eval --help`: the zero-shot Rouge-L eval (see eval/cli.py)."""

from eval.cli import main

main()
