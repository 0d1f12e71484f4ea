"""Ferret's definitions against independent re-statements of the authors' (allen4747/Ferret,
optimizers/ferret_optimizer.py): the blocks, the basis scale, the projection (an explicit basis matrix in
numpy), the server's clipped reconstruction, what the reconstruction converges to, gradient accumulation,
and its payload on the wire."""

from __future__ import annotations

import math
import struct
import zlib

import mpmath
import numpy as np
import pytest
import torch

from kit.federation.messages import DOWNLINK, NO_CLIENT, UPLINK
from kit.methods import FedSettings, build_method
from kit.methods.ferret import basis_std, group_blocks
from kit.methods.ferret_payload import Coefficients, decode, encode
from kit.module import FedKSeedModule
from kit.snapshot import WeightSnapshot

from .conftest import tiny_llama


def _ferret(net: torch.nn.Module, k: int = 16, **hp):
    module = FedKSeedModule(model="unused", method="ferret", **({"lr": 1e-2} | hp))
    method = build_method("ferret", module.hparams, FedSettings(seed=3, local_steps=8, num_seeds=k))
    module.net = method.prepare(net)
    return module, method


def _authors_groups(sizes: list[int]) -> list[list[int]]:
    """`FerretFramework._group_parameters`, transcribed over sizes."""
    groups, current, current_dim = [], [], 0
    target_dim = int(0.9 * np.median(sizes))
    for i, dim in enumerate(sizes):
        if current_dim + dim > target_dim and current:
            groups.append(current)
            current, current_dim = [], 0
        current.append(i)
        current_dim += dim
    if current:
        groups.append(current)
    return groups


@pytest.mark.parametrize(
    "sizes",
    [[1, 1, 1, 50, 50, 50, 50, 1, 1, 200], [7], [3, 3], [100, 1, 1, 1, 1, 1, 1, 100], list(range(1, 40))],
)
def test_blocks_are_the_authors_groups(sizes):
    assert [list(b) for b in group_blocks(sizes)] == _authors_groups(sizes)
    if sizes[0] == 1 and len(sizes) == 10:  # worked by hand: target int(0.9 * 25.5) = 22
        assert [list(b) for b in group_blocks(sizes)] == [[0, 1, 2], [3], [4], [5], [6], [7, 8], [9]]


@pytest.mark.parametrize("d", [1, 2, 100, 10**4, 10**6 - 1, 10**6 + 1, 10**8, 4 * 10**9])
def test_basis_std_is_the_truncated_normals(d):
    mpmath.mp.dps = 50  # the closed form at 50 digits: N(0, 1) truncated to [-1/sqrt(d), 1/sqrt(d)]
    a = 1 / mpmath.sqrt(d)
    var = 1 - 2 * a * mpmath.npdf(a) / mpmath.erf(a / mpmath.sqrt(2))
    assert basis_std(d) == pytest.approx(float(mpmath.sqrt(var)), rel=1e-9)


def _update(method, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        1e-3 * torch.randn(p.shape, generator=g) * (1 + i % 3) for i, p in enumerate(method.global_params())
    ]


def _basis(method, b: int, j: int) -> np.ndarray:
    """v_bj as one float64 row: sigma_b times the block's z, parameters in order."""
    z = np.concatenate([t.double().numpy().ravel() for t in method.block_z(b, j)])
    return method.sigmas[b] * z


def test_projection_is_the_authors_formula_on_an_explicit_basis_matrix():
    _, method = _ferret(tiny_llama(), k=16)
    update = _update(method, 0)
    msg = method.project(2, 5, update)
    delta = [-np.concatenate([update[i].double().numpy().ravel() for i in b]) for b in method.blocks]
    norms = [np.linalg.norm(x) for x in delta]
    for b, block_delta in enumerate(delta):
        n = max(int(norms[b] / max(norms) * 16), 2)  # project_update's seed count
        assert len(msg.indices[b]) == n and len(set(msg.indices[b].tolist())) == n
        basis = np.stack([_basis(method, b, int(j)) for j in msg.indices[b]])  # n x d_b
        expected = (block_delta.size / n) * (basis @ block_delta)  # coordinate *= group_size / n
        # float32 products (the kit's dot): agreement to float32 rounding of the block's largest term
        np.testing.assert_allclose(msg.values[b], expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert max(len(i) for i in msg.indices) == 16  # the block of the largest update takes all K seeds


def test_server_applies_the_weighted_clipped_reconstruction():
    module, method = _ferret(tiny_llama(), k=16, server_lr=10.0)
    snapshot = WeightSnapshot(method.global_params(), "memory")
    snapshot.save()
    theta = [p.detach().double().numpy().copy() for p in method.global_params()]
    updates = [_update(method, 1), [50 * t for t in _update(method, 2)]]  # client 1's terms hit the clip
    msgs = [method.project(1, c, u) for c, u in enumerate(updates)]
    wires = [encode(UPLINK, m, 16, method.fingerprint) for m in msgs]
    down, screening = method.aggregate_train(1, [(1, wires[1]), (0, wires[0])], {0: 1, 1: 3})
    assert len(screening.accepted) == 2
    method.apply_downlink(1, down)
    weights = (0.25, 0.75)  # by sample count, 1 : 3
    clipped = 0
    for b, block in enumerate(method.blocks):
        total: dict[int, float] = {}
        for w, m in zip(weights, msgs, strict=True):
            for j, g in zip(m.indices[b].tolist(), m.values[b].astype(np.float64), strict=True):
                total[j] = total.get(j, 0.0) + w * g
        step = np.zeros(sum(theta[i].size for i in block))
        for j in sorted(total):
            u = np.float32(total[j]) * _basis(method, b, j)  # the downlink carries float32
            norm = np.linalg.norm(u)
            if 10.0 / (norm + 1e-8) < 1:  # FerretFramework.update's max_norm = 10
                u *= 10.0 / (norm + 1e-8)
                clipped += 1
            step += u
        expected = np.concatenate([theta[i].ravel() for i in block]) - 10.0 * step
        got = np.concatenate([method.global_params()[i].detach().double().numpy().ravel() for i in block])
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * max(1.0, np.abs(expected).max()))
    assert clipped > 0  # the clip was exercised


def test_reconstruction_converges_to_a_third_of_the_update():
    """With n = K seeds on one block of d weights, E[(d / n) sum_j v_j v_j^T] = d sigma^2 I ~ I / 3: the
    server's step is server_lr * d sigma^2 * Delta plus noise of relative size sqrt(d / n) / 3."""
    net = torch.nn.Linear(8, 8, bias=False)
    _, method = _ferret(net, k=20000, server_lr=1.0)
    (w,) = method.global_params()
    before = w.detach().double().clone()
    delta = 1e-3 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    msg = method.project(1, 0, [-delta])  # the update theta_new - theta_old = -Delta
    assert [len(i) for i in msg.indices] == [20000]
    method.apply_downlink(1, encode(DOWNLINK, msg_as_downlink(msg), 20000, method.fingerprint))
    step = (before - w.detach().double()).numpy().ravel()
    target = 64 * basis_std(64) ** 2 * delta.double().numpy().ravel()  # ~ Delta / 3
    cos = step @ target / (np.linalg.norm(step) * np.linalg.norm(target))
    assert cos > 0.99 and np.linalg.norm(step) / np.linalg.norm(target) == pytest.approx(1.0, abs=0.05)


def msg_as_downlink(msg: Coefficients) -> Coefficients:
    return Coefficients(msg.round, NO_CLIENT, msg.indices, msg.values)


def test_gradient_accumulation_steps_every_n_batches_and_flushes_at_the_end():
    module, method = _ferret(tiny_llama(), grad_accumulation=2)
    snapshot = WeightSnapshot(method.global_params(), "memory")
    snapshot.save()
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    client = method.client(1, 0, module.batch_loss, snapshot.saved)
    start = [p.detach().clone() for p in method.global_params()]
    moved = []
    for i in range(3):
        client.step(batch, i)
        moved.append(any(not torch.equal(a, p) for a, p in zip(start, method.global_params(), strict=True)))
    assert moved == [False, True, True]
    after_two = [p.detach().clone() for p in method.global_params()]
    # batch 3 (index 2) waits for a 4th; finish() takes it as the round's last step
    client.finish()
    snapshot.restore()
    assert any(not torch.equal(a, p) for a, p in zip(start, after_two, strict=True))
    # two batches accumulated (loss / n_accum each) = one SGD step on their mean gradient; here the
    # same batch twice, so one plain SGD step on its gradient
    module2, method2 = _ferret(tiny_llama(), grad_accumulation=1)
    grads = torch.autograd.grad(module2.batch_loss(batch), list(method2.global_params()))
    with torch.no_grad():
        for p, g, got in zip(method2.global_params(), grads, after_two, strict=True):
            torch.testing.assert_close(got, p - 1e-2 * g, rtol=0, atol=1e-6)


def _wire(method, client_id: int = 0, server_round: int = 1) -> bytes:
    return encode(UPLINK, method.project(server_round, client_id, _update(method, 4)), 16, method.fingerprint)


def test_uplink_bytes_are_its_encoded_length():
    _, method = _ferret(tiny_llama(), k=16)
    msg = method.project(1, 0, _update(method, 4))
    wire = encode(UPLINK, msg, 16, method.fingerprint)
    counts = [len(i) for i in msg.indices]
    # header 36 B, a u16 count per block, per coefficient a u16 index and a float32, crc32
    assert len(wire) == 36 + 2 * len(counts) + 6 * sum(counts) + 4
    assert len(wire) <= method.max_uplink_bytes() == 36 + 2 * len(counts) + 6 * 16 * len(counts) + 4
    again = decode(wire, UPLINK, 16, len(method.blocks), method.fingerprint, 1)
    assert all(np.array_equal(a, b) for a, b in zip(again.values, msg.values, strict=True))


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _poke(wire: bytes, offset: int, fmt: str, value) -> bytes:
    body = bytearray(wire[:-4])
    struct.pack_into(fmt, body, offset, value)
    return _recrc(bytes(body))


def _first_value_offset(wire: bytes, blocks: int) -> int:
    total = struct.unpack_from("<I", wire, 16)[0]
    return 36 + 2 * blocks + 2 * total


@pytest.mark.parametrize(
    ("corrupt", "reason", "match"),
    [
        (lambda w, b: w[:-10], "truncated", "truncated"),
        (lambda w, b: w[:20], "truncated", "shorter than a header"),
        (lambda w, b: w[:-1] + bytes([w[-1] ^ 1]), "corrupt", "checksum"),
        (lambda w, b: w + b"\0", "malformed", "longer than"),
        (lambda w, b: w + b"\0" * 100_000, "oversize", "largest legal"),
        (lambda w, b: b"XXXX" + w[4:], "malformed", "magic"),
        (lambda w, b: _poke(w, 8, "<I", 17), "wrong_pool", "another seed pool"),
        (lambda w, b: _poke(w, 36, "<H", 1), "malformed", "block counts"),
        (lambda w, b: _poke(w, 36 + 2 * b, "<H", 16), "malformed", "ascending"),
        (lambda w, b: _poke(w, _first_value_offset(w, b), "<f", float("nan")), "non_finite", "non-finite"),
    ],
)
def test_malformed_uplinks_are_refused_by_name(corrupt, reason, match):
    _, method = _ferret(tiny_llama(), k=16)
    wire = corrupt(_wire(method), len(method.blocks))
    _, screening = method.aggregate_train(1, [(0, wire)], {0: 10})
    [rejection] = screening.rejected
    assert (rejection.client, rejection.reason) == (0, reason) and match in rejection.detail


def test_uplinks_of_another_round_client_or_model_are_refused():
    _, method = _ferret(tiny_llama(), k=16)
    wire = _wire(method)
    assert method.aggregate_train(2, [(0, wire)], {0: 10})[1].rejected[0].reason == "wrong_round"
    assert method.aggregate_train(1, [(1, wire)], {1: 10})[1].rejected[0].reason == "client_mismatch"
    _, other = _ferret(tiny_llama(), k=17)  # another K: another pool
    assert other.aggregate_train(1, [(0, wire)], {0: 10})[1].rejected[0].reason == "wrong_pool"
    _, wider = _ferret(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)), k=16)
    assert wider.aggregate_train(1, [(0, wire)], {0: 10})[1].rejected[0].reason in ("wrong_pool", "oversize")


def test_a_client_whose_update_is_not_finite_cannot_send_it():
    _, method = _ferret(tiny_llama(), k=16)
    update = _update(method, 0)
    update[0][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        encode(UPLINK, method.project(1, 0, update), 16, method.fingerprint)


def test_ferret_refuses_settings_it_has_no_meaning_for():
    with pytest.raises(ValueError, match="--fed.aggregation mean"):
        build_method(
            "ferret", FedKSeedModule(model="u", method="ferret").hparams, FedSettings(aggregation="median")
        )
    with pytest.raises(ValueError, match="--fed.num_seeds"):
        build_method(
            "ferret", FedKSeedModule(model="u", method="ferret").hparams, FedSettings(num_seeds=70000)
        )
    assert math.isfinite(basis_std(1))
