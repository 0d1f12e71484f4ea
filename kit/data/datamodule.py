"""The federated datamodule: clients' tokenised examples, and each round's planned batches.

    fedkseed fit -c recipes/<scenario>.yaml --data.dataset dolly --data.num_clients 200

One Trainer epoch is one federated round: the loop Callback calls `set_round_plan` with this process's
(client, steps) pairs, and the train loader yields those clients' batches in order. The loader reads the
plan when iteration starts, which Lightning does (and fetches a first batch) before `on_train_epoch_start`:
set the plan in `on_fit_start` and at the end of the previous round. Every batch is a pure function of
(seed, round, client, step), so results do not depend on the number of processes and a resumed run sees
the same data; there is no loader state to checkpoint. A plan entry for client `IDLE_CLIENT` yields
placeholder batches: padding steps that keep every process at the same number of steps. A plan of whole
passes (`fed.local_epochs`, `kit.federation.budget`) serves each pass of a client's examples as
ceil(n / batch size) batches, the last one short, as a `DataLoader(shuffle=True)` does in the reference.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from kit.data.dolly import dolly_example, heldout_sample, load_dolly, split_dolly
from kit.data.examples import Example
from kit.data.natural_instructions import load_ni
from kit.data.tokenize import IGNORE_INDEX, collate, encode_each
from kit.errors import UsageError
from kit.models import load_tokenizer
from kit.paths import data_root

IDLE_CLIENT = -1


class FederatedDataModule(pl.LightningDataModule):
    """Dolly-15K or Natural Instructions split over federated clients.

    Training examples whose prompt alone fills `max_length` tokens are dropped (`overlong: drop`) or kept
    with every label ignored (`overlong: keep`: their loss is NaN, so the step that draws one is spent and
    skipped, as in the reference); both counted (`dropped`, `overlong_counts`). A client left with no
    example is dropped, so client ids run over `num_clients_effective`. Eval examples that do not fit
    are always dropped (their eval loss would be NaN) and counted.

    Args:
        dataset: "dolly" (Dolly-15K, one category held out for eval) or "ni" (Natural Instructions,
            one client per training task, eval on the test tasks).
        data_root: Folder holding dolly/ and natural-instructions/; default $FEDKSEED_DATA_ROOT,
            else download from the Hugging Face Hub.
        tokenizer: Tokenizer name: "smollm2-135m" (embedded), a Hub id, or a local folder.
        num_clients: Number of Dolly clients (NI uses one client per present training task).
        dirichlet_alpha: Dirichlet concentration over Dolly categories (smaller = more skewed);
            null splits iid.
        heldout_category: Dolly category kept out of training and used for eval.
        max_length: Tokens per example (prompt + response + EOS): a longer response is truncated, an
            example whose prompt alone fills it is dropped. (NI inputs are first filtered at the
            reference's 1024 characters.)
        batch_size: Examples per training and eval batch.
        eval_size: Held-out examples used for eval, a seeded sample; null = all of them.
        seed: Seed of the client split, the eval sample and every client's batch order.
        min_client_size: Fewest examples a Dolly client may get from the Dirichlet split.
        overlong: training examples whose prompt fills `max_length`: "drop" them, or "keep" them as the
            reference does (zhenqincn/FedKSeed and FedHDS `utils_data/llm_dataset.py` mask the truncated
            prompt; every label is ignored, the loss is NaN and the step is skipped).
    """

    def __init__(
        self,
        dataset: Literal["dolly", "ni"] = "dolly",
        data_root: str | None = None,
        tokenizer: str = "smollm2-135m",
        num_clients: int = 200,
        dirichlet_alpha: float | None = 0.5,
        heldout_category: str = "summarization",
        max_length: int = 256,
        batch_size: int = 1,
        eval_size: int | None = 200,
        seed: int = 42,
        min_client_size: int = 10,
        overlong: Literal["drop", "keep"] = "drop",
    ) -> None:
        super().__init__()
        checks = {
            "--data.dataset must be 'dolly' or 'ni'": dataset in ("dolly", "ni"),
            "--data.num_clients must be >= 1": num_clients >= 1,
            "--data.dirichlet_alpha must be > 0 or null (iid)": dirichlet_alpha is None
            or dirichlet_alpha > 0,
            "--data.max_length must be >= 2 (a prompt token and a response token)": max_length >= 2,
            "--data.batch_size must be >= 1": batch_size >= 1,
            "--data.eval_size must be >= 1 or null (all)": eval_size is None or eval_size >= 1,
            "--data.seed must be >= 0": seed >= 0,
            "--data.min_client_size must be >= 1": min_client_size >= 1,
            "--data.overlong must be 'drop' or 'keep'": overlong in ("drop", "keep"),
        }
        for message, ok in checks.items():
            if not ok:
                raise UsageError(message)
        self.dataset = dataset
        self.data_root = data_root
        self.tokenizer_name = tokenizer
        self.num_clients = num_clients
        self.dirichlet_alpha = dirichlet_alpha
        self.heldout_category = heldout_category
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_size = eval_size
        self.seed = seed
        self.min_client_size = min_client_size
        self.overlong = overlong
        self._clients: list[list[dict]] | None = None
        self._eval: list[tuple[Example, dict]] = []
        self._dropped: dict[str, int] = {}
        self._pad_id = 0
        self._plan: tuple[int, list[tuple[int, int]], bool] | None = None
        self._overlong: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load, split and tokenise once (later calls return at once); print one summary line."""
        if self._clients is not None:
            return
        start = time.perf_counter()
        tokenizer = load_tokenizer(self.tokenizer_name)
        self._pad_id = tokenizer.pad_token_id
        client_examples, eval_candidates = self._load(data_root(self.data_root))

        # 1) encode every client's examples in one batched call, then regroup by client
        flat = list(itertools.chain.from_iterable(client_examples))
        encoded = encode_each(tokenizer, flat, self.max_length, keep_overlong=self.overlong == "keep")
        overlong_train = sum(e is None or bool((e["labels"] == IGNORE_INDEX).all()) for e in encoded)
        encoded = iter(encoded)
        clients = [[e for e in itertools.islice(encoded, len(c)) if e is not None] for c in client_examples]
        self._clients = [c for c in clients if c]
        # 2) eval: keep the candidates that fit, then a seeded sample of them in their order
        eval_encoded = encode_each(tokenizer, eval_candidates, self.max_length)
        fitting = [i for i, e in enumerate(eval_encoded) if e is not None]
        chosen = heldout_sample(fitting, self.eval_size, self.seed)
        self._eval = [(eval_candidates[i], eval_encoded[i]) for i in chosen]
        self._dropped = {
            "train_prompt_too_long": len(flat) - sum(len(c) for c in self._clients),
            "eval_prompt_too_long": len(eval_candidates) - len(fitting),
            "empty_clients": len(clients) - len(self._clients),
        }
        self._overlong = {
            "policy": self.overlong,
            "train_examples": overlong_train,
            "train_total": len(flat),
            "eval_examples": len(eval_candidates) - len(fitting),
            "eval_total": len(eval_candidates),
        }
        if not self._clients or not self._eval:
            raise UsageError(f"no usable example left (dropped {self._dropped}); raise --data.max_length")
        sizes = sorted(self.client_sizes)
        print(
            f"[kit] data: {self.dataset}, {len(sizes)} clients, {sum(sizes)} train examples "
            f"(per client min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}), "
            f"{len(self._eval)} eval examples; dropped {self._dropped} (prompt >= {self.max_length} tokens; "
            f"overlong train examples: {overlong_train}, {self.overlong}); "
            f"setup {time.perf_counter() - start:.1f}s",
            flush=True,
        )

    def _load(self, root: Path | None) -> tuple[list[list[Example]], list[Example]]:
        """Per-client examples and the eval candidates of the configured dataset."""
        if self.dataset == "ni":
            split = load_ni(root, seed=self.seed)
            return [examples for _, examples in split.train_clients], split.test_examples
        records = load_dolly(root)
        parts, heldout = split_dolly(
            records,
            self.heldout_category,
            self.num_clients,
            self.dirichlet_alpha,
            self.seed,
            self.min_client_size,
        )
        clients = [[dolly_example(records[i]) for i in part] for part in parts]
        return clients, [dolly_example(records[i]) for i in heldout]

    @property
    def num_clients_effective(self) -> int:
        """Number of clients after setup (NI: present training tasks; minus clients left empty)."""
        return len(self._require_setup())

    @property
    def client_sizes(self) -> list[int]:
        """Examples per client after filtering, by client id."""
        return [len(c) for c in self._require_setup()]

    @property
    def dropped(self) -> dict[str, int]:
        """Counts of what setup dropped, by reason."""
        self._require_setup()
        return dict(self._dropped)

    @property
    def overlong_counts(self) -> dict:
        """How many train / eval examples have a prompt that fills `max_length`, and the policy applied."""
        self._require_setup()
        return dict(self._overlong)

    @property
    def eval_examples(self) -> list[Example]:
        """The eval examples (held-out Dolly sample or NI test examples), aligned with `eval_dataloader`."""
        self._require_setup()
        return [ex for ex, _ in self._eval]

    def eval_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """Collated encodings of `eval_examples`, in their order (default batch size: `batch_size`)."""
        self._require_setup()
        return DataLoader(
            [encoding for _, encoding in self._eval],
            batch_size=batch_size or self.batch_size,
            shuffle=False,
            collate_fn=partial(collate, pad_id=self._pad_id),
        )

    def set_round_plan(self, round_idx: int, plan: list[tuple[int, int]], whole_passes: bool = False) -> None:
        """The (client_id, num_steps) pairs this process trains in round `round_idx`, in order.

        `whole_passes`: batches follow pass boundaries (each pass a fresh seeded permutation cut into
        ceil(n / batch size) batches, the last one short), so ceil(n / batch size) steps are exactly one
        pass over the client's examples; otherwise batches of `batch_size` run on across passes.
        """
        num_clients = self.num_clients_effective
        if round_idx < 0:
            raise ValueError(f"round_idx must be >= 0, got {round_idx}")
        for client_id, num_steps in plan:
            if not (0 <= client_id < num_clients or client_id == IDLE_CLIENT) or num_steps < 0:
                raise ValueError(
                    f"bad plan entry ({client_id}, {num_steps}): ids 0..{num_clients - 1} or {IDLE_CLIENT} "
                    "(idle), steps >= 0"
                )
        self._plan = (round_idx, [(int(c), int(s)) for c, s in plan], whole_passes)

    def train_dataloader(self) -> DataLoader:
        """A loader over the batches of the plan set when iteration starts (it is built before the plan)."""
        self._require_setup()
        return DataLoader(_Deferred(self.round_batches), batch_size=None, num_workers=0)

    def round_batches(self) -> Iterator[dict]:
        """The current plan's batches: each planned client's `num_steps` batches in turn, with
        `client_id`, `local_step` (0-based) and `num_steps` added."""
        if self._plan is None:
            raise RuntimeError("set_round_plan must be called before iterating the train loader")
        round_idx, plan, whole_passes = self._plan
        for client_id, num_steps in plan:
            rows = itertools.islice(self._client_rows(round_idx, client_id, whole_passes), num_steps)
            for step, batch in enumerate(rows):
                extra = {"client_id": client_id, "local_step": step, "num_steps": num_steps}
                yield {**collate(batch, self._pad_id), **extra}

    def _client_rows(
        self, round_idx: int, client_id: int, whole_passes: bool = False
    ) -> Iterator[list[dict]]:
        """Endless batches (lists of encodings) of a client in a round, drawn from seeded permutations one
        after another (`whole_passes`: each permutation cut into batches on its own, the last one short;
        the same batches when the batch size is 1); an idle client's rows are a single pad token with its
        label ignored."""
        if client_id == IDLE_CLIENT:
            row = {"input_ids": torch.tensor([self._pad_id]), "labels": torch.tensor([IGNORE_INDEX])}
            while True:
                yield [row] * self.batch_size
        data = self._require_setup()[client_id]
        rng = np.random.default_rng([self.seed, round_idx, client_id])
        passes = (rng.permutation(len(data)).tolist() for _ in itertools.count())
        if whole_passes:
            for order in passes:
                for start in range(0, len(order), self.batch_size):
                    yield [data[i] for i in order[start : start + self.batch_size]]
        order = itertools.chain.from_iterable(passes)
        while True:
            yield [data[next(order)] for _ in range(self.batch_size)]

    def _require_setup(self) -> list[list[dict]]:
        if self._clients is None:
            raise RuntimeError("call setup() on the datamodule first")
        return self._clients


class _Deferred(IterableDataset):
    """An iterable dataset that calls `make_iterator` afresh at each `__iter__`."""

    def __init__(self, make_iterator) -> None:
        self.make_iterator = make_iterator

    def __iter__(self) -> Iterator[dict]:
        return self.make_iterator()
