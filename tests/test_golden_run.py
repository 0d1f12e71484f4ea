"""Golden run: the first losses and the final weights digest of a tiny seeded federation, pinned.

The values were recorded with the kit before the methods refactor (single-method `FederatedLoop`), so
this test proves the refactor left FedKSeed's numbers untouched, bit for bit. z is the same on every
CPU (kit/zo/native), but the 1-layer Llama's forward runs on torch's and MKL's CPU kernels, which
differ between CPU vendors in the last bits: the numbers are pinned per vendor (pinned torch 2.13.0,
x86_64). On a CPU with none recorded the test skips; record its numbers only after checking the
old code gives the same new values there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kit.cli import main
from kit.metrics_csv import read_rows

from .conftest import fed_args

PRO = {  # FedKSeed-Pro: the same on both vendors recorded
    "global_weights_sha256": "3d5be874127609c23c5331ef6bad9fc3e34794ab0be58a64334dc75a8d81b635",
    "train_loss_per_round": [10.77163807551066, 10.751359621683756],
    "eval_loss_per_round": [10.797530710697174, 10.797990441322327],
    "eval_loss_before": 10.798902809619904,
}
GOLDEN = {
    # AMD EPYC, recorded with the code before the methods refactor
    "AuthenticAMD": {
        "fedkseed": {
            "global_weights_sha256": "17506b3edf0931cfc5bb6fc27fe50d7f1732cf40edbbdf44dad3872555b5e69f",
            "train_loss_per_round": [10.787160714467367, 10.784484704335531],
            "eval_loss_per_round": [10.796428561210632, 10.797346234321594],
            "eval_loss_before": 10.798902809619904,
        },
        "fedkseed-pro": PRO,
    },
    # Intel Xeon (torch CPU capability AVX512), 2026-12-03, recorded with bee7241, whose AMD numbers are
    # the ones above
    "GenuineIntel": {
        "fedkseed": {
            "global_weights_sha256": "f8a3f47be66bd627d222dd583b0a5225109ee932cd4362e877463a3d14c28222",
            "train_loss_per_round": [10.787160555521647, 10.784484227498373],
            "eval_loss_per_round": [10.796428442001343, 10.797346591949463],
            "eval_loss_before": 10.798902809619904,
        },
        "fedkseed-pro": PRO,
    },
}


def cpu_vendor() -> str:
    """The CPU's vendor id from /proc/cpuinfo ("GenuineIntel", "AuthenticAMD"), or "" where unknown."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), "")


def golden(method: str) -> dict:
    """This CPU's golden numbers of `method`; skips the calling test where none are recorded."""
    if cpu_vendor() not in GOLDEN:
        pytest.skip(f"no golden numbers recorded for CPU vendor {cpu_vendor()!r} (tests/test_golden_run.py)")
    return GOLDEN[cpu_vendor()][method]


@pytest.mark.parametrize("method", ["fedkseed", "fedkseed-pro"])
def test_fedkseed_numbers_are_pinned(method, tiny_model_dir, data_root, tmp_path):
    expected = golden(method)
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
    assert got == expected
    spreads = [
        float(r["pro/p_max_over_min"]) for r in read_rows(run / "metrics.csv") if r.get("pro/p_max_over_min")
    ]
    if method == "fedkseed-pro":  # per round: max p / min p of the probabilities the next round samples by
        probs = s["pro_probabilities_sorted"]
        assert spreads == [p[0] / p[-1] for p in probs] and len(spreads) == 2
        assert all(1 < x <= math.e * (1 + 1e-6) for x in spreads)  # the reference's cap: e ** temperature
    else:
        assert spreads == []
