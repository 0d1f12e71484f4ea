"""Bytes per client per round of the scalar-payload methods at the paper's scale, by encoding real messages.

    PYTHONPATH=. python scripts/paper_scale_bytes.py            # tau 200, K 4096, DeComFL P 5

FedKSeed: the dense uplink (every one of the K seeds touched: the largest) and the smallest a client of
tau steps can send (tau distinct seeds, sparse); DeComFL: tau x P float32 scalars each way; FeedSign: tau
sign bits each way. Every number is the length of a message the kit's encoder produced.
"""

from __future__ import annotations

import argparse

import numpy as np

from kit.federation.messages import Downlink, Uplink, encode_downlink, encode_uplink
from kit.federation.seeds import SeedPool
from kit.methods import FedSettings, build_method


def rows(tau: int, k: int, perturbations: int) -> list[tuple[str, str, int, int]]:
    pool = SeedPool(k, 42)
    dense = encode_uplink(Uplink(1, 0, np.ones(k, np.float32)), pool.fingerprint)
    few = np.zeros(k, np.float32)
    few[: min(tau, k)] = 1.0
    sparse = encode_uplink(Uplink(1, 0, few), pool.fingerprint)
    down = encode_downlink(Downlink(1, np.ones(k, np.float32)), pool.fingerprint)
    out = [
        ("fedkseed", f"K = {k}, every seed touched", len(dense), len(down)),
        ("fedkseed", f"tau = {tau} distinct seeds", len(sparse), len(sparse)),
    ]
    fed = FedSettings(local_steps=tau)
    hp = {"lr": 3e-7, "zo_eps": 1e-3, "weight_decay": 0.0, "zo_perturbations": perturbations}
    for name, setting in (("decomfl", f"tau = {tau}, P = {perturbations}"), ("feedsign", f"tau = {tau}")):
        method = build_method(name, hp | {"zo_estimator": "forward"}, fed)
        values = np.ones(method.size, np.float32)
        up = encode_uplink(Uplink(1, 0, values), method.fingerprint, signs=method.signs)
        out.append((name, setting, len(up), len(method._encode(1, values))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tau", type=int, default=200, help="local steps per round (paper 200)")
    parser.add_argument("--k", type=int, default=4096, help="FedKSeed's seed pool (paper 4096)")
    parser.add_argument("--perturbations", type=int, default=5, help="DeComFL's P (its README: 5)")
    args = parser.parse_args()
    print("| method | setting | uplink bytes per client | downlink bytes |")
    print("|---|---|---|---|")
    for name, setting, up, down in rows(args.tau, args.k, args.perturbations):
        print(f"| `{name}` | {setting} | {up} | {down} |")


if __name__ == "__main__":
    main()
