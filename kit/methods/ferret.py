"""Ferret (Shu et al., ICML 2025, arXiv 2409.06277): first-order local steps, the update sent as a few
coefficients on shared-seed random bases, full-parameter reconstruction on the server.

    fedkseed fit -c recipes/<scenario>.yaml -c recipes/methods/ferret.yaml

Every definition follows the authors' code, allen4747/Ferret (`optimizers/ferret_optimizer.py`, `client.py`,
`server.py`, `main.py`, `scripts/ferret.sh`):

1) Client (`client.py` `local_train_with_seed_pool`, `FerretFramework.step`): from the global weights, SGD
   (momentum 0) on every weight, the loss of each batch divided by `grad_accumulation` and one optimizer
   step every `grad_accumulation` batches (`--n_accum`); gradient-norm clip when `grad_clip` > 0.
2) Blocks (`FerretFramework._group_parameters`): the parameters in model order, a new block whenever the
   next one would push the block past 0.9 x the median parameter size (`group_blocks`).
3) Projection (`FerretFramework.project_update`): Delta = theta_old - theta_new; block b (d_b weights) gets
   n_b = max(floor(||Delta_b|| / max_b' ||Delta_b'|| * K), 2) of the K seeds, drawn without replacement;
   per chosen seed j, gamma_bj = (d_b / n_b) <Delta_b, v_bj>. The authors' basis v is a standard normal
   truncated to [-1/sqrt(d_b), 1/sqrt(d_b)]; the kit draws the kit's one z (kit/zo, the same bits on
   every device) and scales it to the same variance: v_bj = sigma(d_b) z(mix(seed_j, b)) over the
   block's weights, sigma(d)^2 the truncated normal's variance (about 1 / (3 d)). The two bases share
   E[v v^T] = sigma^2 I, so the reconstruction has the authors' expectation, (d sigma^2) Delta ~ Delta / 3.
4) Server (`server.py` `aggregate_seed_pool`, `update_global_model_by_seed_pool`,
   `FerretFramework.update`): G_bj = sum_c w_c gamma_cbj; per (seed, block) the update gamma v is clipped
   to norm 10 (`update`'s max_norm) and theta_b -= server_lr * clipped(G_bj v_bj), seeds ascending.

What the kit does differently, and why: the seeds a client picks are a function of (federation seed,
round, client, block), not Python's global `random` (determinism); the authors' server momentum
(`--momentum`, 0.0 in `scripts/ferret.sh`) and server-lr annealing (`--anneal no` there) are not
implemented (the script's values only); a round whose batches do not fill the last accumulation takes that
partial step at the end (the authors drop it; equal for tau a multiple of `grad_accumulation`); the
weights are float32 (the authors load the model in float16); a non-finite loss skips its batch, as every
first-order method of the kit. The server screens uplinks by format, round, pool and finiteness (no norm
bound: an honest client's coefficients scale with its update, which has none). The budget is the
scenario's tau batches (kit/federation/budget.py); the authors' script trains 40 batches (10 steps of 4)
for 12 rounds. Uplink: 36 + 2 B + 6 sum_b n_b + 4 bytes for B blocks (kit/methods/ferret_payload.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from kit.errors import UsageError
from kit.federation.aggregate import client_weights
from kit.federation.messages import DOWNLINK, NO_CLIENT, UPLINK
from kit.federation.screening import Accepted
from kit.federation.seeds import SeedPool
from kit.methods.base import NO_UPDATE, ClientUpdate, FedSettings, LossFn, StepOutcome
from kit.methods.ferret_payload import MAX_K, MIN_UPLINK_SEEDS, Coefficients, decode, encode, max_message_size
from kit.methods.first_order import FirstOrder
from kit.zo import portable
from kit.zo.perturb import DEFAULT_CHUNK, Perturber
from kit.zo.seeding import mix

BLOCK_MEDIAN_FRACTION = 0.9  # ferret_optimizer.py _group_parameters: int(0.9 * median(numel))
MAX_UPDATE_NORM = 10.0  # ferret_optimizer.py FerretFramework.update(max_norm=10)
MIN_MAX_NORM = 1e-8  # ferret_optimizer.py project_update: max_delta_norm starts at 1e-8
_CHUNK = 1 << 22  # dot products in slices of this many elements (bounded scratch memory)
_ROW = 1024


# -- the math, in pure functions ------------------------------------------------------------------
def group_blocks(sizes: Sequence[int]) -> list[range]:
    """Consecutive parameter-index ranges: a block closes when adding the next parameter would take it past
    int(0.9 * median(sizes)) (a parameter larger than that is a block alone)."""
    target = int(BLOCK_MEDIAN_FRACTION * float(np.median(sizes)))
    blocks, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if total + size > target and i > start:
            blocks.append(range(start, i))
            start, total = i, 0
        total += size
    blocks.append(range(start, len(sizes)))
    return blocks


def basis_std(d: int) -> float:
    """Standard deviation of N(0, 1) truncated to [-a, a], a = 1/sqrt(d): the authors' basis entries."""
    a = 1.0 / math.sqrt(d)
    if a < 1e-3:  # the closed form cancels to nothing: its series, a^2/3 (1 - 2a^2/15 + O(a^4))
        var = a * a / 3.0 * (1.0 - 2.0 * a * a / 15.0)
    else:
        pdf = math.exp(-a * a / 2.0) / math.sqrt(2.0 * math.pi)
        var = 1.0 - 2.0 * a * pdf / math.erf(a / math.sqrt(2.0))
    return math.sqrt(var)


def seeds_per_block(norms: Sequence[float], k: int) -> list[int]:
    """n_b = max(floor(||Delta_b|| / max ||Delta|| * K), 2) (a non-finite norm gets 2)."""
    finite = [x for x in norms if math.isfinite(x)]
    top = max([MIN_MAX_NORM, *finite])
    return [
        min(k, max(int(x / top * k), MIN_UPLINK_SEEDS)) if math.isfinite(x) else MIN_UPLINK_SEEDS
        for x in norms
    ]


def chosen_seeds(seed: int, server_round: int, client_id: int, block: int, n: int, k: int) -> np.ndarray:
    """The n seed indices of K a client projects block `block` on (ascending, without replacement)."""
    rng = np.random.default_rng([seed, 0xFE77E7, server_round, client_id, block])
    return np.sort(rng.choice(k, size=n, replace=False))


def block_seed(pool_seed: int, block: int) -> int:
    """The seed of z on block `block` for candidate seed `pool_seed` (independent bases per block)."""
    return mix(pool_seed, 0xB10C, block)


def clipped_coefficient(g: float, sigma: float, z_norm: float, max_norm: float = MAX_UPDATE_NORM) -> float:
    """The server's coefficient of z for aggregated gamma `g`: g sigma, scaled down so that
    ||g v|| <= max_norm (`FerretFramework.update`: clip_coef = max_norm / (||g v|| + 1e-8) when below 1)."""
    norm = abs(g) * sigma * z_norm
    scale = max_norm / (norm + 1e-8)
    return g * sigma * (scale if scale < 1.0 else 1.0)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """<a, b> of two float32 tensors: float32 products summed in rows of 1024 (a fixed order whatever the
    thread count), the row sums added in float64; in slices, so the scratch memory stays bounded."""
    a, b = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for i in range(0, a.numel(), _CHUNK):
        x, y = a[i : i + _CHUNK], b[i : i + _CHUNK]
        whole = x.numel() - x.numel() % _ROW
        if whole:
            total += float((x[:whole].view(-1, _ROW) * y[:whole].view(-1, _ROW)).sum(1).double().sum())
        if whole < x.numel():
            total += float(torch.dot(x[whole:].double(), y[whole:].double()))
    return total


# -- the method ------------------------------------------------------------------------------------
class Ferret(FirstOrder):
    """Ferret over the module's hyperparameters `hp` (lr, grad_accumulation, server_lr, z settings)."""

    supports_dp = False  # its coefficients payload has no DP rule yet (the tensor base's is not used)

    def __init__(self, hp: Mapping, fed: FedSettings) -> None:
        super().__init__("ferret", hp, fed, None, "sgd")
        if fed.aggregation != "mean":
            raise UsageError(
                f"ferret averages coefficients on per-client seed choices; --fed.aggregation "
                f"{fed.aggregation} has no per-coordinate meaning there: use --fed.aggregation mean"
            )
        if not MIN_UPLINK_SEEDS <= fed.num_seeds <= MAX_K:
            raise UsageError(f"ferret needs --fed.num_seeds in [2, {MAX_K}], got {fed.num_seeds}")
        self.pool = SeedPool(fed.num_seeds, fed.seed)
        self.server_lr = float(hp.get("server_lr", 10.0))
        self.accumulation = int(hp.get("grad_accumulation", 1))
        self.blocks: list[range] = []
        self.sizes: list[int] = []
        self.sigmas: list[float] = []
        self.perturbers: list[Perturber] = []
        self.fingerprint = b""

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        net = super().prepare(net)
        params = self.global_params()
        self.blocks = group_blocks([p.numel() for p in params])
        self.sizes = [sum(params[i].numel() for i in b) for b in self.blocks]
        self.sigmas = [basis_std(d) for d in self.sizes]
        recorded = self.z_record
        self.perturbers = [
            Perturber(
                [params[i] for i in b],
                self.hp["distribution"],
                num_threads=1,
                chunk_size=recorded.chunk_size if recorded else DEFAULT_CHUNK,
                backend=self.hp["zo_backend"],
                recorded=recorded,
            )
            for b in self.blocks
        ]
        layout = np.asarray(self.sizes, dtype="<u8").tobytes()
        self.fingerprint = hashlib.sha256(self.pool.fingerprint + layout).digest()[:8]
        return net

    def client(
        self,
        server_round: int,
        client_id: int,
        loss_fn: LossFn,
        saved_global: Callable[[], Iterable[torch.Tensor]],
    ) -> ClientUpdate:
        return _FerretClient(self, server_round, client_id, loss_fn, saved_global)

    def block_z(self, block: int, j: int) -> list[torch.Tensor]:
        """z of candidate seed j on block `block`, one float32 tensor per parameter of the block."""
        return self.perturbers[block].z(block_seed(self.pool[j], block))

    def project(self, server_round: int, client_id: int, update: Sequence[torch.Tensor]) -> Coefficients:
        """The client's coefficients of `update` (= theta_new - theta_old, one tensor per parameter)."""
        norms = [math.sqrt(sum(_dot(update[i], update[i]) for i in b)) for b in self.blocks]
        counts = seeds_per_block(norms, self.pool.k)
        indices, values = [], []
        for b, (block, n) in enumerate(zip(self.blocks, counts, strict=True)):
            chosen = chosen_seeds(self.fed.seed, server_round, client_id, b, n, self.pool.k)
            scale = -self.sizes[b] / n * self.sigmas[b]  # Delta = theta_old - theta_new = -update
            gammas = []
            for j in chosen:
                zs = self.block_z(b, int(j))
                gammas.append(scale * sum(_dot(update[i], z) for i, z in zip(block, zs, strict=True)))
            indices.append(chosen)
            values.append(np.asarray(gammas, dtype=np.float32))
        return Coefficients(server_round, client_id, tuple(indices), tuple(values))

    def max_uplink_bytes(self) -> int:
        return max_message_size(self.pool.k, len(self.blocks))

    def decode_uplink(self, server_round: int, wire: bytes) -> tuple[int, Coefficients]:
        msg = decode(wire, UPLINK, self.pool.k, len(self.blocks), self.fingerprint, server_round)
        return msg.client_id, msg

    def aggregate_accepted(
        self, server_round: int, accepted: Sequence[Accepted], num_samples: Sequence[int]
    ) -> bytes:
        if not accepted:
            return NO_UPDATE
        total = np.zeros((len(self.blocks), self.pool.k), dtype=np.float64)
        touched = np.zeros(total.shape, dtype=bool)
        weights = client_weights(num_samples, self.fed.equal_weights)
        for a, w in zip(accepted, weights, strict=True):  # ascending client id
            for b, (idx, val) in enumerate(zip(a.value.indices, a.value.values, strict=True)):
                total[b, idx] += w * val.astype(np.float64)
                touched[b, idx] = True
        idx = tuple(np.flatnonzero(row) for row in touched)
        val = tuple(total[b, i].astype(np.float32) for b, i in enumerate(idx))
        return encode(
            DOWNLINK, Coefficients(server_round, NO_CLIENT, idx, val), self.pool.k, self.fingerprint
        )

    @torch.no_grad()
    def apply_downlink(self, server_round: int, downlink: bytes) -> dict[str, float]:
        if downlink == NO_UPDATE:
            return {"fed/coefficients": 0.0}
        msg = decode(downlink, DOWNLINK, self.pool.k, len(self.blocks), self.fingerprint, server_round)
        params = self.global_params()
        for b, (idx, val) in enumerate(zip(msg.indices, msg.values, strict=True)):
            for j, g in zip(idx.tolist(), val.tolist(), strict=True):
                zs = self.block_z(b, j)
                z_norm = math.sqrt(sum(_dot(z, z) for z in zs))
                alpha = -self.server_lr * clipped_coefficient(g, self.sigmas[b], z_norm)
                for i, z in zip(self.blocks[b], zs, strict=True):
                    portable.axpy_(params[i], z.to(params[i].device), alpha)
        return {"fed/coefficients": float(msg.total)}

    def z_definition(self):
        return self.perturbers[0].definition if self.perturbers else None

    def summary(self) -> dict:
        return {
            **super().summary(),
            "payload": "coefficients",  # float32 on the wire whatever wire_dtype says
            "wire_dtype": "float32",
            "uplink_norm_ratio": None,  # screened by format, round, pool and finiteness; no norm bound
            "K": self.pool.k,
            "blocks": len(self.blocks),
            "server_lr": self.server_lr,
            "grad_accumulation": self.accumulation,
            "uplink_bytes_max": self.max_uplink_bytes() if self.blocks else None,
        }

    def close(self) -> None:
        for p in self.perturbers:
            p.close()


class _FerretClient(ClientUpdate):
    def __init__(self, method: Ferret, server_round: int, client_id: int, loss_fn: LossFn, saved_global):
        self.m, self.round, self.client_id, self.loss_fn = method, server_round, client_id, loss_fn
        self.saved_global = saved_global
        torch.manual_seed(mix(method.fed.seed, server_round, client_id, 0xD20))  # dropout, as first_order
        self.params = method.global_params()
        self.opt = method.make_optimizer(self.params)
        self.pending = 0  # batches whose gradients wait for the next optimizer step
        method.net.train()

    def step(self, batch: dict, local_step: int) -> StepOutcome:
        acc = self.m.accumulation
        loss = self.loss_fn(batch)
        value = float(loss.detach())
        finite = math.isfinite(value)
        if finite:
            (loss / acc).backward()  # client.py / FerretFramework.step: loss / n_accum
            clip = self.m.hp["grad_clip"]
            if clip is not None and clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.pending += 1
        if local_step % acc == acc - 1:  # client.py: apply_optim_step on every n_accum-th batch
            self._apply()
        return StepOutcome(value, skipped=not finite)

    def _apply(self) -> None:
        if self.pending:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.pending = 0

    @torch.no_grad()
    def finish(self) -> bytes:
        self._apply()  # a partial accumulation at the end of the round (the kit's choice, see the module)
        self.opt = None
        self.m.net.eval()
        # the loop restores the global weights next, so theta_new - theta_old is formed in place
        for p, g in zip(self.params, self.saved_global(), strict=True):
            p.sub_(g.to(p.device))
        msg = self.m.project(self.round, self.client_id, self.params)
        return encode(UPLINK, msg, self.m.pool.k, self.m.fingerprint)
