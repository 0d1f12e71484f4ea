"""FeedSign's robustness claim at toy scale: a fraction of each round's clients attack; final eval loss.

    FEDKSEED_DATA_ROOT=../shared/data .venv/bin/python benchmarks/byzantine_votes.py [--out DIR] [--quick]

Setting: the kit's methods as units (client update, screening, server rule, global update: the same code
as `fedkseed fit`, without Lightning) on a random 2-layer Llama with SmolLM2's vocabulary (~3.3M weights,
`common.tiny_config`) and the shipped Dolly-15K (the quickstart partition: 20 clients, Dirichlet 0.5,
batch 1, 128 tokens), 5 clients per round, tau local steps, eval loss on 16 held-out examples. In every
round the `f` highest-id sampled clients attack: FeedSign's flip every vote; the scalar methods' send
-100 x their honest scalars (inside the kit's honest bound, so screening accepts them: the "huge scalars"
an attacker can still send). Rules: FeedSign (one vote per client), FedKSeed with the mean, with
`--fed.scalar_bound` and with the coordinate median (K = 8 so that clients share seeds: with the paper's
K = 4096 and 20 draws per round the median zeroes almost every seed), DeComFL (P 1) with the mean and
the median. Each rule's lr is the best of `--lrs` without attackers. A mechanism check, not a result
at the paper's scale. Writes `byzantine.json` and `byzantine.png` under --out; `--plot_from LOG...` draws
them from earlier runs' stdout instead (runs split by `--variants`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from common import base_parser, data_root, emit, machine, random_llama, tiny_config

from kit.data.datamodule import FederatedDataModule
from kit.federation.messages import Uplink, decode_uplink, encode_uplink
from kit.federation.server import sample_clients
from kit.methods import FedSettings, build_method
from kit.module import FedKSeedModule
from kit.snapshot import WeightSnapshot

SCALE = -100.0  # what a scalar attacker sends: its honest scalars, flipped and scaled
VARIANTS = {  # name: (method, fed settings)
    "feedsign": ("feedsign", {"equal_weights": True}),
    "fedkseed mean": ("fedkseed", {"num_seeds": 8}),
    "fedkseed scalar_bound": ("fedkseed", {"num_seeds": 8, "scalar_bound": 10.0}),
    "fedkseed median": ("fedkseed", {"num_seeds": 8, "aggregation": "median"}),
    "decomfl mean": ("decomfl", {"equal_weights": True}),
    "decomfl median": ("decomfl", {"aggregation": "median"}),
}


def _attack(method, wire: bytes, server_round: int) -> bytes:
    """The attacker's uplink: FeedSign's votes flipped, the scalar methods' scalars x SCALE."""
    if method.name == "feedsign":
        up = decode_uplink(wire, method.size, method.fingerprint, server_round, method.encodings)
        return encode_uplink(Uplink(up.round, up.client_id, -up.scalars), method.fingerprint, signs=True)
    k, fp = (
        (method.pool.k, method.pool.fingerprint)
        if method.name == "fedkseed"
        else (method.size, method.fingerprint)
    )
    up = decode_uplink(wire, k, fp, server_round)
    return encode_uplink(Uplink(up.round, up.client_id, (up.scalars * SCALE).astype(np.float32)), fp)


def run(variant: str, lr: float, attackers: int, args, dm) -> list[float]:
    """Eval loss before and after each round of one federation."""
    name, fed = VARIANTS[variant]
    hp = {"lr": lr, "zo_eps": 1e-3}
    module = FedKSeedModule(model="unused", method=name, **hp)
    method = build_method(name, module.hparams, FedSettings(seed=args.seed, local_steps=args.tau, **fed))
    module.net = method.prepare(random_llama(tiny_config()))
    snapshot = WeightSnapshot(method.global_params(), "memory")
    snapshot.save()
    evals = [dm_eval(module, dm)]
    for r in range(1, args.rounds + 1):
        n = dm.num_clients_effective
        clients = sample_clients(args.seed, r, n, (args.per_round + 0.5) / n)
        dm.set_round_plan(r, [(c, args.tau) for c in clients])
        batches = iter(dm.round_batches())
        uplinks = []
        for i, c in enumerate(clients):
            client = method.client(r, c, module.batch_loss, snapshot.saved)
            for k in range(args.tau):
                client.step(next(batches), k)
            wire = client.finish()
            snapshot.restore()
            uplinks.append((c, _attack(method, wire, r) if i >= len(clients) - attackers else wire))
        down, _ = method.aggregate_train(r, uplinks, {c: 1 for c in clients})
        method.apply_downlink(r, down)
        snapshot.save()
        evals.append(dm_eval(module, dm))
    method.close()
    return evals


@torch.no_grad()
def dm_eval(module, dm) -> float:
    losses = [float(module.batch_loss(b)) for b in dm.eval_dataloader(4)]
    return sum(losses) / len(losses)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/results/byzantine"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tau", type=int, default=4)
    parser.add_argument("--per_round", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attackers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--plot_from", type=Path, nargs="+", help="draw from these runs' stdout (JSON lines)")
    args = parser.parse_args()
    if args.plot_from:
        lines = [ln for f in args.plot_from for ln in f.read_text().splitlines() if ln.startswith("{")]
        records = [json.loads(ln) for ln in lines]
    else:
        records = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "byzantine.json").write_text(json.dumps({"machine": machine(), "records": records}, indent=1))
    plot(records, args, args.out / "byzantine.png")


def measure(args) -> list[dict]:
    if args.quick:
        args.rounds, args.lrs, args.attackers = 2, [1e-3], [0, 2]
    dm = FederatedDataModule(
        dataset="dolly", data_root=str(data_root()), num_clients=20, max_length=128, seed=5, eval_size=16
    )
    dm.setup("fit")
    records = []
    for variant in args.variants:
        sweep = {lr: run(variant, lr, 0, args, dm) for lr in args.lrs}
        lr = min(sweep, key=lambda x: sweep[x][-1] if math.isfinite(sweep[x][-1]) else math.inf)
        for f in args.attackers:
            curve = sweep[lr] if f == 0 else run(variant, lr, f, args, dm)
            record = dict(variant=variant, lr=lr, attackers=f, eval_before=curve[0], eval_after=curve[-1])
            record |= {"curve": curve, "sweep": {str(k): v[-1] for k, v in sweep.items()}}
            emit(**record)
            records.append(record)
    return records


def plot(records: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in records))
    counts = sorted({r["attackers"] for r in records})
    final = {(r["variant"], r["attackers"]): r["eval_after"] for r in records}
    before = records[0]["eval_before"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(counts)
    for j, f in enumerate(counts):
        xs = [i + (j - (len(counts) - 1) / 2) * width for i in range(len(variants))]
        ys = [final.get((v, f), math.nan) - before for v in variants]
        ax.bar(xs, ys, width, label=f"{f} of {args.per_round} clients attack")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xticks(range(len(variants)), variants, rotation=15, fontsize=8)
    ax.set_ylabel("final - initial eval loss (nats)")
    ax.legend(fontsize=7)
    ax.set_title(
        "Attackers per round vs the rule: tiny random Llama on Dolly (benchmarks/byzantine_votes.py)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
