"""The federated datamodule: setup on the shipped data, round plans, and batch order as a pure function."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

from kit.data.datamodule import IDLE_CLIENT, FederatedDataModule


@pytest.fixture(scope="module")
def ni(data_root) -> FederatedDataModule:
    dm = FederatedDataModule(dataset="ni", data_root=str(data_root), batch_size=2, seed=3)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dolly(data_root) -> FederatedDataModule:
    dm = FederatedDataModule(dataset="dolly", data_root=str(data_root), num_clients=20, max_length=256)
    dm.setup("fit")
    return dm


def round_batches(dm: FederatedDataModule, round_idx: int, plan: list[tuple[int, int]]) -> list[dict]:
    loader = dm.train_dataloader()  # built before the plan, as Lightning does
    dm.set_round_plan(round_idx, plan)
    return list(loader)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_batch_sequence_is_pure_function_of_round_and_client(ni, data_root):
    both = round_batches(ni, 5, [(0, 3), (4, 2)])
    alone = round_batches(ni, 5, [(4, 2)])  # another process training only client 4
    assert all(same(a, b) for a, b in zip(both[3:], alone, strict=True))
    fresh = FederatedDataModule(dataset="ni", data_root=str(data_root), batch_size=2, seed=3)
    fresh.setup()
    assert all(same(a, b) for a, b in zip(both, round_batches(fresh, 5, [(0, 3), (4, 2)]), strict=True))
    assert not same(both[0], round_batches(ni, 6, [(0, 1)])[0])


def test_batches_follow_the_plan_with_client_and_step(ni):
    batches = round_batches(ni, 0, [(2, 3), (0, 1)])
    steps = [(b["client_id"], b["local_step"], b["num_steps"]) for b in batches]
    assert steps == [(2, 0, 3), (2, 1, 3), (2, 2, 3), (0, 0, 1)]
    for b in batches:
        assert b["input_ids"].shape[0] == 2
        assert b["input_ids"].shape == b["attention_mask"].shape == b["labels"].shape


def test_idle_entries_yield_ignored_padding_batches(ni):
    batches = round_batches(ni, 2, [(1, 1), (IDLE_CLIENT, 2)])
    assert [(b["client_id"], b["local_step"]) for b in batches] == [
        (1, 0),
        (IDLE_CLIENT, 0),
        (IDLE_CLIENT, 1),
    ]
    for b in batches[1:]:
        assert b["input_ids"].shape == (2, 1) and (b["labels"] == -100).all()


def test_client_data_cycles_when_exhausted(ni):
    client = min(range(ni.num_clients_effective), key=lambda c: ni.client_sizes[c])
    size = ni.client_sizes[client]
    batches = round_batches(ni, 1, [(client, size + 1)])  # batch_size 2: more than two passes
    seen = [
        tuple(row[mask.bool()].tolist())
        for b in batches
        for row, mask in zip(b["input_ids"], b["attention_mask"], strict=True)
    ]
    assert len(set(seen[:size])) == size  # the first pass is a permutation of the client's examples
    assert set(seen) == set(seen[:size])


def test_iterating_before_a_plan_is_set_raises(dolly):
    with pytest.raises(RuntimeError, match="set_round_plan"):
        next(iter(dolly.train_dataloader()))  # no test sets a plan on the Dolly datamodule
    with pytest.raises(ValueError, match="bad plan entry"):
        dolly.set_round_plan(0, [(dolly.num_clients_effective, 1)])
    with pytest.raises(ValueError, match="bad plan entry"):
        dolly.set_round_plan(0, [(-2, 1)])


def test_ni_has_one_client_per_usable_task_and_eval_on_test_tasks(ni):
    assert ni.num_clients_effective == 55 and len(ni.client_sizes) == 55
    assert len({ex.task for ex in ni.eval_examples}) == 9
    assert set(ni.dropped) == {"train_prompt_too_long", "eval_prompt_too_long", "empty_clients"}


def test_dolly_setup_counts_clients_and_drops(dolly):
    assert dolly.num_clients_effective == 20 and dolly.dropped["empty_clients"] == 0
    assert sum(dolly.client_sizes) + dolly.dropped["train_prompt_too_long"] == 15011 - 1188
    assert len(dolly.eval_examples) == 200 and {ex.task for ex in dolly.eval_examples} == {"summarization"}


def test_eval_loader_is_deterministic_and_aligned_with_eval_examples(dolly):
    first = list(dolly.eval_dataloader(batch_size=8))
    assert sum(len(b["input_ids"]) for b in first) == len(dolly.eval_examples)
    assert all(same(a, b) for a, b in zip(first, dolly.eval_dataloader(batch_size=8), strict=True))
    assert all(b["attention_mask"].shape[1] <= 256 for b in first)


def test_setup_is_idempotent(ni):
    sizes, eval_examples = ni.client_sizes, ni.eval_examples
    ni.setup("validate")
    assert ni.client_sizes == sizes and ni.eval_examples == eval_examples


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"num_clients": 0}, "--data.num_clients"),
        ({"dirichlet_alpha": 0.0}, "--data.dirichlet_alpha"),
        ({"max_length": 1}, "--data.max_length"),
        ({"batch_size": 0}, "--data.batch_size"),
        ({"eval_size": 0}, "--data.eval_size"),
        ({"dataset": "alpaca"}, "--data.dataset"),
    ],
)
def test_invalid_arguments_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        FederatedDataModule(**kwargs)


def test_help_documents_every_argument():
    parser = ArgumentParser()
    parser.add_class_arguments(FederatedDataModule, "data")
    text = " ".join(parser.format_help().split())
    for flag, words in {
        "--data.num_clients": "Number of Dolly clients",
        "--data.dirichlet_alpha": "null splits iid",
        "--data.eval_size": "null = all of them",
        "--data.min_client_size": "Fewest examples",
    }.items():
        assert flag in text and words in text


def test_overlong_keep_trains_on_the_examples_drop_removes(data_root):
    kwargs = {"dataset": "ni", "data_root": str(data_root), "max_length": 128, "seed": 3}
    drop, keep = FederatedDataModule(**kwargs), FederatedDataModule(**kwargs, overlong="keep")
    drop.setup(), keep.setup()
    overlong = keep.overlong_counts["train_examples"]
    assert overlong > 0 and drop.overlong_counts["train_examples"] == overlong
    assert drop.dropped["train_prompt_too_long"] == overlong and keep.dropped["train_prompt_too_long"] == 0
    assert sum(keep.client_sizes) == sum(drop.client_sizes) + overlong == keep.overlong_counts["train_total"]
    # the kept ones are the examples with no label to train on
    masked = 0
    for client, size in enumerate(keep.client_sizes):
        batches = round_batches(keep, 0, [(client, size)])  # batch_size 1: the first pass
        masked += sum(bool((b["labels"] == -100).all()) for b in batches)
    assert masked == overlong
    assert keep.eval_examples == drop.eval_examples  # eval drops what does not fit, whatever the policy
