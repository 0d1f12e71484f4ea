"""Natural Instructions: a client per present train task, the seeded eval sample, skipped tasks, Hub path."""

from __future__ import annotations

import json

import datasets
import pytest

from kit.data.natural_instructions import NI_HUB_ID, SPLITS_DIR, TASKS_DIR, load_ni
from kit.data.prompts import ni_prompt
from kit.errors import UsageError


@pytest.fixture(scope="module")
def split(data_root):
    return load_ni(data_root)


def listed(data_root, which: str) -> list[str]:
    return (data_root / SPLITS_DIR / f"{which}_tasks.txt").read_text().split()


def short_instances(data_root, name: str) -> list[dict]:
    task = json.loads((data_root / TASKS_DIR / f"{name}.json").read_text())
    return [i for i in task["Instances"] if len(i["input"]) < 1024]


def test_ni_one_client_per_present_train_task(split, data_root):
    present = [n for n in listed(data_root, "train") if (data_root / TASKS_DIR / f"{n}.json").is_file()]
    usable = [n for n in present if len(short_instances(data_root, n)) >= 20]
    assert [name for name, _ in split.train_clients] == usable  # split-file order
    assert sorted(split.skipped["train_too_few_instances"]) == sorted(set(present) - set(usable))
    for name, examples in split.train_clients:
        assert len(examples) == int(0.2 * len(short_instances(data_root, name)))
        assert {ex.task for ex in examples} == {name}


def test_ni_reports_absent_tasks(data_root, capsys):
    split = load_ni(data_root)
    assert len(split.skipped["train_absent"]) == 756 - 57 and len(split.skipped["test_absent"]) == 119 - 9
    assert set(split.skipped["train_absent"]) <= set(listed(data_root, "train"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert "57/756 train tasks present, 699 absent" in lines[0] and "9/119 test tasks present" in lines[0]


def test_ni_eval_sample_is_seeded_and_covers_every_test_task(split, data_root):
    present = [n for n in listed(data_root, "test") if (data_root / TASKS_DIR / f"{n}.json").is_file()]
    by_task = {n: [ex for ex in split.test_examples if ex.task == n] for n in present}
    for name, examples in by_task.items():
        n = len(short_instances(data_root, name))
        assert len(examples) == (max(20, int(0.02 * n)) if n > 20 else n)
        assert len({ex.prompt for ex in examples}) == len(examples)  # sampled without replacement
    assert load_ni(data_root).test_examples == split.test_examples
    assert load_ni(data_root, seed=7).test_examples != split.test_examples


def test_ni_prompt_is_the_definition_and_input_response_the_first_output(split, data_root):
    name, examples = split.train_clients[0]
    task = json.loads((data_root / TASKS_DIR / f"{name}.json").read_text())
    expected = {ni_prompt(task["Definition"][0], i["input"]): i["output"][0] for i in task["Instances"]}
    assert all(expected[ex.prompt] == ex.response for ex in examples)


def test_missing_ni_root_error_names_fix(tmp_path):
    with pytest.raises(UsageError, match="train_tasks.txt") as err:
        load_ni(tmp_path)
    assert "--data.data_root" in str(err.value) and "FEDKSEED_DATA_ROOT" in str(err.value)


def test_no_usable_train_task_raises(tmp_path):
    (tmp_path / SPLITS_DIR).mkdir(parents=True)
    (tmp_path / SPLITS_DIR / "train_tasks.txt").write_text("task1_missing\n")
    (tmp_path / SPLITS_DIR / "test_tasks.txt").write_text("task2_missing\n")
    with pytest.raises(ValueError, match="no usable Natural Instructions training task"):
        load_ni(tmp_path)


def test_hub_path_calls_load_dataset_offline(monkeypatch):
    def rows(task: str, count: int) -> dict[str, list[str]]:
        return {
            "task_name": [task] * count,
            "definition": [f"Do {task}."] * count,
            "inputs": [f"{task} input {i}" for i in range(count)],
            "targets": [f"{task} output {i}" for i in range(count)],
        }

    def concat(*parts: dict) -> dict:
        return {key: sum((p[key] for p in parts), []) for key in parts[0]}

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append(path)
        train = concat(rows("task_b", 30), rows("task_a", 25), rows("task_c", 5))
        test = concat(rows("task_t", 40), rows("task_u", 10))
        return datasets.DatasetDict(
            train=datasets.Dataset.from_dict(train), test=datasets.Dataset.from_dict(test)
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    split = load_ni(None)
    assert calls == [NI_HUB_ID]
    assert [(name, len(examples)) for name, examples in split.train_clients] == [("task_b", 6), ("task_a", 5)]
    assert split.skipped["train_too_few_instances"] == ["task_c"]
    assert [ex.task for ex in split.test_examples] == ["task_t"] * 20 + ["task_u"] * 10
    task_b = {(ni_prompt("Do task_b.", f"task_b input {i}"), f"task_b output {i}") for i in range(30)}
    assert {(ex.prompt, ex.response) for ex in split.train_clients[0][1]} <= task_b
