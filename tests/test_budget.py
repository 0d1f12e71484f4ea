"""Local budgets: tau steps for ZO methods, whole passes over a client's data for first-order baselines."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from kit.data.datamodule import IDLE_CLIENT, FederatedDataModule
from kit.federation.budget import LocalBudget, client_steps, local_budget, process_plan
from kit.methods import METHODS


@pytest.fixture(scope="module")
def ni(data_root) -> FederatedDataModule:
    dm = FederatedDataModule(dataset="ni", data_root=str(data_root), max_length=128, batch_size=3, seed=5)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
@pytest.mark.parametrize("num_examples", [1, 2, 5, 6, 7, 69])
def test_an_epoch_is_as_many_steps_as_the_reference_loader_has_batches(num_examples, batch_size):
    # the reference (FedHDS client.py, --batch_or_epoch epoch) runs len(DataLoader) steps per epoch
    reference = len(DataLoader(range(num_examples), batch_size=batch_size, shuffle=True))
    assert client_steps(num_examples, batch_size, LocalBudget("epochs", 1)) == reference
    assert client_steps(num_examples, batch_size, LocalBudget("epochs", 3)) == 3 * reference
    assert client_steps(num_examples, batch_size, LocalBudget("steps", 8)) == 8


def test_zo_methods_take_steps_and_first_order_methods_take_epochs_when_set():
    for method in METHODS:
        # ferret: local batches, as its authors
        zo = method in ("fedkseed", "fedkseed-pro", "fedzo", "decomfl", "feedsign", "ferret")
        assert local_budget(method, 200, 1) == (
            LocalBudget("steps", 200) if zo else LocalBudget("epochs", 1)
        ), method
        assert local_budget(method, 8, None) == LocalBudget("steps", 8)  # the equal-step comparison
    with pytest.raises(ValueError, match=">= 1 steps or epochs"):
        LocalBudget("epochs", 0)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_process_plans_cover_the_arrived_clients_and_pad_to_the_busiest_process(world_size):
    sizes = [5, 1, 12, 7, 3, 9, 2]
    arrived = [6, 0, 2, 5, 3]  # a round's sampled clients that arrived, in sampling order
    budget = LocalBudget("epochs", 1)
    steps = [(c, client_steps(sizes[c], 1, budget)) for c in arrived]
    plans = [process_plan(steps, r, world_size, IDLE_CLIENT) for r in range(world_size)]
    totals = {sum(steps for _, steps in plan) for plan in plans}
    assert len(totals) == 1  # every process runs as many steps (Lightning steps them in lockstep)
    trained = [entry for plan in plans for entry in plan if entry[0] != IDLE_CLIENT]
    assert sorted(trained) == sorted((c, sizes[c]) for c in arrived)  # one pass each, batch 1
    assert sum(steps for _, steps in trained) == sum(sizes[c] for c in arrived)
    for plan in plans:
        assert [e for e in plan if e[0] == IDLE_CLIENT] in ([], [plan[-1]])  # padding comes last, once
        assert all(steps > 0 for _, steps in plan)


def test_a_round_with_every_client_missing_still_takes_one_idle_step():
    for rank in (0, 1):
        assert process_plan([], rank, 2, IDLE_CLIENT) == [(IDLE_CLIENT, 1)]


def test_a_step_budget_pads_as_before():
    # tau steps per client, 3 clients on 2 processes: rank 1 idles one client's worth of steps
    steps = [(c, client_steps(9, 2, LocalBudget("steps", 6))) for c in (4, 1, 2)]
    plans = [process_plan(steps, r, 2, IDLE_CLIENT) for r in (0, 1)]
    assert plans == [[(4, 6), (2, 6)], [(1, 6), (IDLE_CLIENT, 6)]]


def _examples(batches: list[dict]) -> list[tuple[int, ...]]:
    return [
        tuple(row[mask.bool()].tolist())
        for b in batches
        for row, mask in zip(b["input_ids"], b["attention_mask"], strict=True)
    ]


def _round(dm: FederatedDataModule, round_idx: int, plan, whole_passes: bool) -> list[dict]:
    loader = dm.train_dataloader()
    dm.set_round_plan(round_idx, plan, whole_passes=whole_passes)
    return list(loader)


def test_an_epoch_serves_each_of_a_clients_examples_exactly_once(ni):
    budget = LocalBudget("epochs", 1)
    for client in range(ni.num_clients_effective):
        size = ni.client_sizes[client]
        steps = client_steps(size, ni.batch_size, budget)
        batches = _round(ni, 4, [(client, steps)], whole_passes=True)
        assert len(batches) == steps
        served = _examples(batches)
        own = _examples(_round(ni, 4, [(client, steps)], whole_passes=False))[:size]  # the stream's 1st pass
        assert sorted(served) == sorted(own)  # every example once: a pass, no repeat, none missing
        assert [len(b["input_ids"]) for b in batches[:-1]] == [ni.batch_size] * (steps - 1)
        assert len(batches[-1]["input_ids"]) == size - ni.batch_size * (steps - 1)  # the short last batch


def test_two_epochs_are_two_different_permutations_of_the_clients_examples(ni):
    client = max(range(ni.num_clients_effective), key=lambda c: ni.client_sizes[c])
    steps = client_steps(ni.client_sizes[client], ni.batch_size, LocalBudget("epochs", 2))
    served = _examples(_round(ni, 1, [(client, steps)], whole_passes=True))
    first, second = served[: len(served) // 2], served[len(served) // 2 :]
    assert sorted(first) == sorted(second) and first != second


def test_whole_passes_at_batch_size_one_serve_the_step_budgets_batches(data_root):
    dm = FederatedDataModule(dataset="ni", data_root=str(data_root), max_length=128, batch_size=1, seed=5)
    dm.setup()
    plan = [(3, 2 * dm.client_sizes[3] + 1), (0, 4)]
    passes, stream = _round(dm, 2, plan, True), _round(dm, 2, plan, False)
    assert len(passes) == len(stream)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(passes, stream, strict=True))


def test_first_order_clients_train_one_pass_per_round_and_skip_the_kept_overlong(
    tiny_model_dir, data_root, tmp_path
):
    """FedIT with `local_epochs: 1` on NI at batch 1, the reference's `overlong: keep`: each sampled
    client takes as many steps as it has examples, and exactly its overlong ones are skipped."""
    from kit.cli import main
    from kit.federation.server import sample_clients
    from kit.metrics_csv import read_rows

    from .conftest import FEDIT_ONE_EPOCH_KEEP, fed_args

    run = tmp_path / "run"
    args = fed_args(tiny_model_dir, data_root, run, rounds=2)
    args += FEDIT_ONE_EPOCH_KEEP
    main(args)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["local_budget"] == {"unit": "epochs", "value": 1}
    assert summary["overlong_examples"]["policy"] == "keep"

    dm = FederatedDataModule(dataset="ni", data_root=str(data_root), max_length=128, overlong="keep")
    dm.setup()
    rows = {int(r["round"]): r for r in read_rows(run / "metrics.csv") if r.get("fed/local_steps")}
    assert sorted(rows) == [1, 2]
    for rnd, row in rows.items():
        clients = sample_clients(
            42, rnd, dm.num_clients_effective, 0.05
        )  # the default seed, fed_args' fraction
        sizes = [dm.client_sizes[c] for c in clients]
        masked = 0
        for client, size in zip(clients, sizes, strict=True):
            batches = _round(dm, rnd, [(client, size)], whole_passes=True)
            masked += sum(bool((b["labels"] == -100).all()) for b in batches)
        assert float(row["fed/local_steps"]) == sum(sizes)  # one pass each, skipped steps included
        assert float(row["zo/skipped_steps"]) == masked  # the kept overlong examples: NaN loss, skipped
