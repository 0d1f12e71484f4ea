"""Dolly-15K: loading (local and Hub), prompts, the held-out split and the eval sample."""

from __future__ import annotations

import datasets
import pytest

from kit.data.dolly import DOLLY_HUB_ID, dolly_example, heldout_sample, load_dolly, split_dolly
from kit.data.prompts import DOLLY_NO_CONTEXT
from kit.errors import UsageError


@pytest.fixture(scope="module")
def records(data_root) -> list[dict]:
    return load_dolly(data_root)


def test_load_dolly_reads_every_record(records):
    assert len(records) == 15011
    assert set(records[0]) == {"instruction", "context", "response", "category"}
    assert sum(r["category"] == "summarization" for r in records) == 1188


def test_missing_data_root_error_names_fix(tmp_path):
    with pytest.raises(UsageError, match="databricks-dolly-15k.jsonl") as err:
        load_dolly(tmp_path)
    assert "--data.data_root" in str(err.value) and "FEDKSEED_DATA_ROOT" in str(err.value)


def test_hub_path_calls_load_dataset_offline(monkeypatch, records):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(records[:3])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_dolly(None) == records[:3]
    assert calls == [(DOLLY_HUB_ID, {"split": "train"})]


def test_dolly_example_uses_the_reference_template_and_category():
    record = {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"}
    ex = dolly_example(record)
    assert ex.prompt == DOLLY_NO_CONTEXT.format(instruction="Name a colour.")
    assert (ex.response, ex.task) == ("Blue.", "open_qa")
    with_context = dolly_example({**record, "context": "Sky."})
    assert "### Input:\nSky.\n\n### Response:" in with_context.prompt


def test_heldout_category_never_in_training(records):
    clients, heldout = split_dolly(records, "summarization", num_clients=50, alpha=0.5, seed=0)
    train = [i for client in clients for i in client]
    assert len(heldout) == 1188 and {records[i]["category"] for i in heldout} == {"summarization"}
    assert all(records[i]["category"] != "summarization" for i in train)
    assert sorted(train + heldout) == list(range(len(records)))
    assert min(len(c) for c in clients) >= 10


def test_alpha_none_splits_iid(records):
    clients, _ = split_dolly(records, num_clients=7, alpha=None, seed=0)
    sizes = [len(c) for c in clients]
    assert sizes[:-1] == [13823 // 7] * 6 and sum(sizes) == 13823


def test_unknown_heldout_category_names_the_flag(records):
    with pytest.raises(ValueError, match="--data.heldout_category"):
        split_dolly(records, "poetry", num_clients=5, alpha=0.5, seed=0)


def test_impossible_split_names_the_flags(records):
    with pytest.raises(ValueError, match="--data.num_clients"):
        split_dolly(records, num_clients=2000, alpha=0.5, seed=0)


def test_heldout_sample_is_seeded_and_keeps_order():
    indices = list(range(100, 1288))
    sample = heldout_sample(indices, 200, seed=42)
    assert sample == heldout_sample(indices, 200, seed=42) != heldout_sample(indices, 200, seed=43)
    assert len(set(sample)) == 200 and sample == sorted(sample) and set(sample) <= set(indices)
    assert heldout_sample(indices, None, seed=42) == indices
