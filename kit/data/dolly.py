"""Dolly-15K: loading, prompts, and the reference split (one category held out, the rest over clients).

    python -c "from kit.data.dolly import load_dolly; print(len(load_dolly(None)))"  # from the Hub

The split follows the reference (`utils_data/load_data.py`); pass a data root to read a local copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kit.data.examples import Example
from kit.data.hub import load_hub_dataset
from kit.data.partition import dirichlet_partition, iid_partition
from kit.data.prompts import dolly_prompt
from kit.errors import UsageError
from kit.paths import DATA_ROOT_ENV

DOLLY_HUB_ID = "databricks/databricks-dolly-15k"
DOLLY_FILE = Path("dolly") / "databricks-dolly-15k.jsonl"


def load_dolly(root: Path | None) -> list[dict]:
    """The Dolly records (instruction, context, response, category): from `root`, or the Hub when None."""
    import datasets

    if root is None:
        return load_hub_dataset(DOLLY_HUB_ID, str(DOLLY_FILE), split="train").to_list()
    path = Path(root) / DOLLY_FILE
    if not path.is_file():
        raise UsageError(
            f"Dolly file not found: {path}. Pass --data.data_root DIR (or set ${DATA_ROOT_ENV}) to a folder "
            f"holding {DOLLY_FILE}, or leave both unset to download {DOLLY_HUB_ID} from the Hub"
        )
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train").to_list()
    except Exception:
        bad = first_bad_jsonl_line(path)  # name the file and the row instead of the parser's trace
        if bad is None:
            raise
        raise UsageError(f"{bad}; fix or remove that line (or restore the file)") from None


DOLLY_FIELDS = ("instruction", "context", "response", "category")


def first_bad_jsonl_line(path: Path) -> str | None:
    """Where a Dolly JSONL file is malformed ("FILE line N: what"), or None if every line is a JSON
    object with Dolly's string fields."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                return f"{path} line {n}: not valid JSON ({exc.msg} at column {exc.colno})"
            if not isinstance(record, dict):
                return f"{path} line {n}: not a JSON object"
            wrong = [k for k in DOLLY_FIELDS if not isinstance(record.get(k), str)]
            if wrong:
                return f"{path} line {n}: field {wrong[0]} is missing or not a string"
    return None


def dolly_example(record: dict) -> Example:
    """One record as an Example: the reference template, the response, and the category as task."""
    prompt = dolly_prompt(record["instruction"], record["context"])
    return Example(prompt, record["response"], record["category"])


def split_dolly(
    records: list[dict],
    heldout_category: str = "summarization",
    num_clients: int = 200,
    alpha: float | None = 0.5,
    seed: int = 42,
    min_size: int = 10,
) -> tuple[list[list[int]], list[int]]:
    """Client index lists over the records not in `heldout_category`, and the held-out indices.

    Clients are split by Dirichlet(`alpha`) over categories (iid when `alpha` is None), as in the
    reference `utils_data/load_data.py` with `--zerotask 7` (summarization, the last sorted category).
    Indices point into `records`.
    """
    categories = np.array([r["category"] for r in records])
    if heldout_category not in categories:
        raise ValueError(
            f"held-out category {heldout_category!r} is not in the data; fix --data.heldout_category "
            f"(one of {sorted(set(categories))})"
        )
    heldout = np.flatnonzero(categories == heldout_category)
    train = np.flatnonzero(categories != heldout_category)
    try:
        if alpha is None:
            parts = iid_partition(len(train), num_clients, seed)
        else:
            parts = dirichlet_partition(categories[train], num_clients, alpha, seed, min_size)
    except ValueError as err:
        raise ValueError(
            f"{err}: adjust --data.num_clients, --data.min_client_size or --data.dirichlet_alpha"
        ) from err
    return [train[p].tolist() for p in parts], heldout.tolist()


def heldout_sample(indices: list[int], size: int | None, seed: int) -> list[int]:
    """A seeded sample of `size` of `indices` in their original order; all of them when `size` is None
    or not smaller."""
    if size is None or size >= len(indices):
        return list(indices)
    chosen = np.random.default_rng(seed).choice(len(indices), size=size, replace=False)
    return [indices[i] for i in sorted(chosen)]
