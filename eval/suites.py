"""The zero-shot eval sets: Natural Instructions test tasks (`ni`) and Dolly's held-out category (`dolly`).

    python -c "from eval.suites import build_suite; print(len(build_suite('ni', '../shared/data')))"

Both come from the kit's data loaders, so they are the tasks and categories training never sees: `ni` is
the seeded per-task sample of `load_ni` (max(20, 2%) instances of every test task present), `dolly` a
seeded sample of the held-out category (the reference scores all of it; `dolly_size=None` does too).
"""

from __future__ import annotations

from itertools import chain, zip_longest
from pathlib import Path

from kit.data.dolly import dolly_example, heldout_sample, load_dolly, split_dolly
from kit.data.examples import Example
from kit.data.natural_instructions import load_ni

SUITES = ("ni", "dolly")


def build_suite(
    name: str,
    data_root: Path | str | None,
    *,
    seed: int = 42,
    dolly_size: int | None = 200,
    heldout_category: str = "summarization",
    limit: int | None = None,
) -> list[Example]:
    """The examples of suite `name` from `data_root` (the Hub when None), at most `limit` of them.

    A `limit` takes examples from each task in turn, so a small limit still covers every task.
    """
    root = Path(data_root) if data_root is not None else None
    if name == "ni":
        examples = load_ni(root, seed=seed).test_examples
    elif name == "dolly":
        records = load_dolly(root)
        _, heldout = split_dolly(records, heldout_category, seed=seed)
        examples = [dolly_example(records[i]) for i in heldout_sample(heldout, dolly_size, seed)]
    else:
        raise ValueError(f"unknown eval suite {name!r}; fix --suite (one of {', '.join(SUITES)})")
    return examples if limit is None else round_robin(examples)[:limit]


def round_robin(examples: list[Example]) -> list[Example]:
    """`examples` reordered to take one of each task in turn (tasks in order of first appearance)."""
    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, []).append(ex)
    return [ex for ex in chain.from_iterable(zip_longest(*by_task.values())) if ex is not None]
