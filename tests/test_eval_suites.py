"""The zero-shot eval suites from the real data copy: seeded, complete over NI test tasks, Dolly held out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eval.suites import build_suite, round_robin
from kit.data.examples import Example
from kit.paths import DATA_ROOT_ENV

DATA_ROOT = Path(os.environ.get(DATA_ROOT_ENV) or Path(__file__).parents[1].parent / "shared" / "data")
NI = DATA_ROOT / "natural-instructions"
needs_data = pytest.mark.skipif(not NI.is_dir(), reason=f"no data root at {DATA_ROOT}; set ${DATA_ROOT_ENV}")


@pytest.fixture(scope="module")
def dolly() -> list[Example]:
    return build_suite("dolly", DATA_ROOT, seed=42, dolly_size=200)


@needs_data
def test_ni_sample_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    first = build_suite("ni", DATA_ROOT, seed=42)
    assert first == build_suite("ni", DATA_ROOT, seed=42)
    assert first != build_suite("ni", DATA_ROOT, seed=7)


@needs_data
def test_ni_covers_every_test_task_present() -> None:
    listed = (NI / "splits" / "default" / "test_tasks.txt").read_text().split()
    present = {name for name in listed if (NI / "tasks" / f"{name}.json").is_file()}
    assert present
    assert {ex.task for ex in build_suite("ni", DATA_ROOT)} == present


@needs_data
def test_ni_limit_takes_tasks_in_turn() -> None:
    tasks = {ex.task for ex in build_suite("ni", DATA_ROOT)}
    limited = build_suite("ni", DATA_ROOT, limit=len(tasks))
    assert len(limited) == len(tasks)
    assert {ex.task for ex in limited} == tasks


@needs_data
def test_dolly_sample_holds_only_the_heldout_category(dolly: list[Example]) -> None:
    assert len(dolly) == 200
    assert {ex.task for ex in dolly} == {"summarization"}
    assert len({ex.prompt for ex in dolly}) > 190  # distinct records (the data has a few duplicates)


@needs_data
def test_dolly_sample_is_the_same_for_the_same_seed(dolly: list[Example]) -> None:
    assert build_suite("dolly", DATA_ROOT, seed=42, dolly_size=200) == dolly


def test_round_robin_alternates_tasks_in_order_of_appearance() -> None:
    examples = [Example(str(i), "", task) for i, task in enumerate("aaabcb")]
    assert [ex.prompt for ex in round_robin(examples)] == ["0", "3", "4", "1", "5", "2"]


def test_unknown_suite_names_the_flag() -> None:
    with pytest.raises(ValueError, match="--suite"):
        build_suite("mmlu", None)
