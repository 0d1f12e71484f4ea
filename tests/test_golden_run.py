"""Golden run: the first losses and the final weights digest of a tiny seeded federation, pinned.

The values were recorded with the kit before the methods refactor (single-method `FederatedLoop`), so
this test proves the refactor left FedKSeed's numbers untouched, bit for bit. They depend on torch's
CPU kernels for a 1-layer Llama (pinned torch 2.13.0, x86_64): re-pin only after checking the old
code gives the same new values on the new machine.
"""

from __future__ import annotations

import json

import pytest

from kit.cli import main

from .conftest import fed_args

GOLDEN = {
    "fedkseed": {
        "global_weights_sha256": "17506b3edf0931cfc5bb6fc27fe50d7f1732cf40edbbdf44dad3872555b5e69f",
        "train_loss_per_round": [10.787160714467367, 10.784484704335531],
        "eval_loss_per_round": [10.796428561210632, 10.797346234321594],
        "eval_loss_before": 10.798902809619904,
    },
    "fedkseed-pro": {
        "global_weights_sha256": "3d5be874127609c23c5331ef6bad9fc3e34794ab0be58a64334dc75a8d81b635",
        "train_loss_per_round": [10.77163807551066, 10.751359621683756],
        "eval_loss_per_round": [10.797530710697174, 10.797990441322327],
        "eval_loss_before": 10.798902809619904,
    },
}


@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_fedkseed_numbers_are_pinned(method, tiny_model_dir, data_root, tmp_path):
    run = tmp_path / method
    args = fed_args(tiny_model_dir, data_root, run, rounds=2) + ["--fed.rouge_at_end", "false"]
    args += ["--method", method]
    main(args)
    s = json.loads((run / "summary.json").read_text())
    got = {
        "global_weights_sha256": s["global_weights_sha256"],
        "train_loss_per_round": s["train_loss_per_round"],
        "eval_loss_per_round": s["eval_loss_per_round"],
        "eval_loss_before": s["eval_loss_before"],
    }
    print(json.dumps({method: got}))
    assert got == GOLDEN[method]
