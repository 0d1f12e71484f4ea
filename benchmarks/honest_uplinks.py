"""How far honest FedKSeed uplinks stay inside the derived bound (kit/federation/bounds.py).

    python benchmarks/honest_uplinks.py -c recipes/small-dolly-smollm2.yaml --trainer.max_epochs 1 \
        --fed.eval_every 0 --fed.rouge_at_end false --run_dir runs/bench-honest

Runs `fedkseed fit` with the given arguments (in this process) and records, for every accepted
uplink, the largest |scalar|; prints per round the largest one, the bound tau * C / (2 eps) the run
derived, and their ratio (the honest margin: how far below what screening rejects honest clients are).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from kit.cli import main
from kit.methods import fedkseed


def run(argv: list[str]) -> dict:
    seen: dict[int, float] = {}
    decode = fedkseed.FedKSeed.decode_uplink

    def recording(self, server_round, wire):
        client, up = decode(self, server_round, wire)
        worst = float(np.max(np.abs(up.scalars.astype(np.float64)))) if up.scalars.size else 0.0
        seen[server_round] = max(seen.get(server_round, 0.0), worst)
        recording.bound = self.uplink_bound
        return client, up

    fedkseed.FedKSeed.decode_uplink = recording
    try:
        main(["fit", *argv])
    finally:
        fedkseed.FedKSeed.decode_uplink = decode
    bound = recording.bound
    rounds = [
        {"round": r, "max_abs_scalar": m, "bound": bound, "ratio": m / bound} for r, m in sorted(seen.items())
    ]
    return {"argv": argv, "rounds": rounds, "max_ratio": max(r["ratio"] for r in rounds)}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:]), indent=2))
