"""Natural Instructions v2: one client per training task, a sampled eval set over the test tasks.

    python -c "from kit.data.natural_instructions import load_ni; load_ni(None)"  # from the Hub

Filters and sample sizes follow the reference (`utils_data/natural_instruction_loader.py`). Tasks listed
in the split files but absent from the data root (the shipped copy is trimmed) are skipped and reported.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.data.examples import Example
from kit.data.hub import load_hub_dataset
from kit.data.prompts import ni_prompt
from kit.errors import UsageError
from kit.paths import DATA_ROOT_ENV

NI_HUB_ID = "Muennighoff/natural-instructions"
NI_DIR = Path("natural-instructions")
SPLITS_DIR = NI_DIR / "splits" / "default"
TASKS_DIR = NI_DIR / "tasks"


@dataclass(frozen=True)
class Task:
    """One task's definition and its (input, first output) instances, in source order."""

    definition: str
    instances: list[tuple[str, str]]


@dataclass
class NISplit:
    """Training clients (task name, examples) in split-file order, the eval examples, and what was skipped."""

    train_clients: list[tuple[str, list[Example]]]
    test_examples: list[Example]
    skipped: dict[str, list[str]]


def load_ni(
    root: Path | None,
    *,
    max_input_chars: int = 1024,
    min_instances: int = 20,
    sample_fraction: float = 0.2,
    eval_min: int = 20,
    eval_fraction: float = 0.02,
    seed: int = 42,
    use_prompts: bool = True,
) -> NISplit:
    """Load NI from `root` (or the Hub when None) and apply the reference filters and samples.

    Train: keep instances whose input is shorter than `max_input_chars` characters, skip a task with fewer
    than `min_instances` left, sample int(`sample_fraction` * n) of them. Test: same filter, then
    max(`eval_min`, int(`eval_fraction` * n)) of them when more than `eval_min` are left, else all.
    Each task samples with its own generator from (`seed`, task name), so a task's sample does not
    depend on which other tasks are present (the reference drew them in turn from the global RNG).
    """
    if not 0 < sample_fraction <= 1:
        raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
    train_names, test_names, tasks = _local_tasks(Path(root)) if root is not None else _hub_tasks()
    skipped: dict[str, list[str]] = {
        "train_absent": [],
        "train_too_few_instances": [],
        "test_absent": [],
        "test_empty": [],
    }

    train_clients = []
    for name in train_names:
        if name not in tasks:
            skipped["train_absent"].append(name)
            continue
        instances = _short_instances(tasks[name], max_input_chars)
        size = int(sample_fraction * len(instances))
        if len(instances) < min_instances or size == 0:
            skipped["train_too_few_instances"].append(name)
            continue
        chosen = _task_rng(seed, name).choice(len(instances), size=size, replace=False)
        train_clients.append((name, _examples(tasks[name], instances, chosen, name, use_prompts)))

    test_examples: list[Example] = []
    for name in test_names:
        if name not in tasks:
            skipped["test_absent"].append(name)
            continue
        instances = _short_instances(tasks[name], max_input_chars)
        if not instances:
            skipped["test_empty"].append(name)
            continue
        chosen = np.arange(len(instances))
        if len(instances) > eval_min:
            size = max(eval_min, int(eval_fraction * len(instances)))
            chosen = _task_rng(seed, name).choice(len(instances), size=size, replace=False)
        test_examples.extend(_examples(tasks[name], instances, chosen, name, use_prompts))

    print(
        f"[kit] natural-instructions: {len(train_names) - len(skipped['train_absent'])}/{len(train_names)} "
        f"train tasks present, {len(skipped['train_absent'])} absent, "
        f"{len(skipped['train_too_few_instances'])} with < {min_instances} short inputs; "
        f"{len(test_names) - len(skipped['test_absent'])}/{len(test_names)} test tasks present, "
        f"{len(skipped['test_empty'])} with no input under {max_input_chars} chars",
        flush=True,
    )
    if not train_clients:
        raise ValueError(
            f"no usable Natural Instructions training task ({len(skipped['train_absent'])} absent, "
            f"{len(skipped['train_too_few_instances'])} with too few instances); check --data.data_root"
        )
    if not test_examples:
        raise ValueError("no Natural Instructions test task with usable instances; check --data.data_root")
    return NISplit(train_clients, test_examples, skipped)


def _local_tasks(root: Path) -> tuple[list[str], list[str], dict[str, Task]]:
    """Split lists from `root` and the listed tasks whose files are present."""
    names = {}
    for split in ("train", "test"):
        path = root / SPLITS_DIR / f"{split}_tasks.txt"
        if not path.is_file():
            raise UsageError(
                f"Natural Instructions split file not found: {path}. Pass --data.data_root DIR (or set "
                f"${DATA_ROOT_ENV}) to a folder holding {SPLITS_DIR}/ and {TASKS_DIR}/, or leave both unset "
                f"to download {NI_HUB_ID} from the Hub"
            )
        names[split] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    tasks = {}
    for name in names["train"] + names["test"]:
        path = root / TASKS_DIR / f"{name}.json"
        if path.is_file():
            raw = json.loads(path.read_text())
            tasks[name] = Task(raw["Definition"][0], [(i["input"], i["output"][0]) for i in raw["Instances"]])
    return names["train"], names["test"], tasks


def _hub_tasks() -> tuple[list[str], list[str], dict[str, Task]]:
    """Tasks of the Hub copy: its train/test splits are NI's default split; task order = first appearance."""
    dataset = load_hub_dataset(NI_HUB_ID, f"{SPLITS_DIR}/ and {TASKS_DIR}/")
    names: dict[str, list[str]] = {}
    tasks: dict[str, Task] = {}
    for split in ("train", "test"):
        names[split] = []
        columns = dataset[split].select_columns(["task_name", "definition", "inputs", "targets"])
        for batch in columns.iter(batch_size=10_000):
            for name, definition, task_input, target in zip(
                batch["task_name"], batch["definition"], batch["inputs"], batch["targets"], strict=True
            ):
                if name not in tasks:
                    tasks[name] = Task(definition, [])
                    names[split].append(name)
                tasks[name].instances.append((task_input, target))
    return names["train"], names["test"], tasks


def _short_instances(task: Task, max_input_chars: int) -> list[tuple[str, str]]:
    return [(x, y) for x, y in task.instances if len(x) < max_input_chars]


def _task_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _examples(
    task: Task, instances: list[tuple[str, str]], chosen: np.ndarray, name: str, use_prompts: bool
) -> list[Example]:
    return [
        Example(ni_prompt(task.definition, instances[i][0], use_prompts), instances[i][1], name)
        for i in chosen
    ]
