"""DeComFL and FeedSign as units: their updates against an independent re-statement of the authors'
formulas, their payloads' bytes, malformed payloads refused by name, and a node's replay of missed rounds."""

from __future__ import annotations

import re
import struct
import zlib

import numpy as np
import pytest
import torch

from kit.federation.messages import Uplink, encode_uplink
from kit.methods import FedSettings, build_method
from kit.methods.feedsign import majority
from kit.module import FedKSeedModule
from kit.snapshot import WeightSnapshot

from .conftest import tiny_llama

EPS = 1e-2


def _batch(seed: int) -> dict:
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :5] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _setup(name: str, tau: int = 2, fed: dict | None = None, **hp):
    hp = {"lr": 1e-3, "zo_eps": EPS} | hp
    module = FedKSeedModule(model="unused", method=name, **hp)
    method = build_method(
        name, module.hparams, FedSettings(**({"seed": 3, "local_steps": tau} | (fed or {})))
    )
    module.net = method.prepare(tiny_llama())
    snapshot = WeightSnapshot(method.global_params(), "memory")
    snapshot.save()
    return module, method, snapshot


def _client(method, module, snapshot, client_id: int, server_round: int = 1) -> bytes:
    client = method.client(server_round, client_id, module.batch_loss, snapshot.saved)
    for k in range(method.tau):
        client.step(_batch(100 * client_id + 10 * server_round + k), k)
    wire = client.finish()
    snapshot.restore()
    return wire


# -- the re-statement: flat float64 vectors, z materialised, losses at explicit weights ---------------
def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def _z(method, seed: int) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in method.perturber.z(seed)])


def _loss_at(module, method, theta: torch.Tensor, batch: dict) -> float:
    offset = 0
    with torch.no_grad():
        for p in method.global_params():
            p.copy_(theta[offset : offset + p.numel()].view_as(p).float())
            offset += p.numel()
        return float(module.batch_loss(batch))


def _decomfl_client(module, method, theta0, client_id: int, lr: float, forward: bool) -> np.ndarray:
    """DeComFL's client (cezo_fl/client.py local_update, random_gradient_estimator.py): per step k, P
    scalars at the same weights, then theta -= lr * mean_i g_i z_i."""
    theta, grads = theta0.clone(), []
    for k in range(method.tau):
        batch = _batch(100 * client_id + 10 + k)
        zs = [_z(method, s) for s in method.step_seeds(1, k)]
        base = _loss_at(module, method, theta, batch)
        g = []
        for z in zs:
            plus = _loss_at(module, method, theta + EPS * z, batch)
            minus = base if forward else _loss_at(module, method, theta - EPS * z, batch)
            g.append((plus - minus) / (EPS if forward else 2 * EPS))
        theta = theta - lr * sum(gi * z for gi, z in zip(g, zs, strict=True)) / len(zs)
        grads.append(g)
    return np.asarray(grads)


@pytest.mark.parametrize("estimator", ["forward", "central"])
def test_decomfl_update_is_the_mean_scalars_along_the_servers_seeds(estimator):
    lr, p = 1e-3, 3
    module, method, snapshot = _setup(
        "decomfl", tau=2, fed={"equal_weights": True}, zo_perturbations=p, zo_estimator=estimator
    )
    theta0 = _flat(method.global_params())
    wires = [_client(method, module, snapshot, c) for c in (0, 1)]
    ups = [method.decode_uplink(1, w)[1].reshape(method.tau, p) for w in wires]
    for c, up in enumerate(ups):
        expected = _decomfl_client(module, method, theta0, c, lr, estimator == "forward")
        snapshot.restore()
        np.testing.assert_allclose(up, expected, rtol=2e-2, atol=2e-3)
    down, screening = method.aggregate_train(1, [(1, wires[1]), (0, wires[0])], {0: 1, 1: 7})
    assert [a.client for a in screening.accepted] == [0, 1]
    g = (ups[0].astype(np.float64) + ups[1]) / 2  # cezo_fl/server.py fed_avg: the unweighted mean
    np.testing.assert_allclose(method._decode(1, down).reshape(method.tau, p), g, rtol=1e-6)
    method.apply_downlink(1, down)
    step = sum(
        g[k, i] * _z(method, s) for k in range(method.tau) for i, s in enumerate(method.step_seeds(1, k))
    )
    torch.testing.assert_close(_flat(method.global_params()), theta0 - lr / p * step, rtol=0, atol=1e-6)


def test_decomfl_with_several_forward_perturbations_lowers_the_clients_loss():
    module, method, snapshot = _setup("decomfl", tau=40, lr=2e-3, zo_perturbations=3, zo_estimator="forward")
    client, batch = method.client(1, 0, module.batch_loss, snapshot.saved), _batch(0)
    losses = [client.step(batch, k).loss for k in range(method.tau)]
    assert sum(losses[-5:]) / 5 < losses[0] - 0.02, losses


def _feedsign_votes(module, method, theta0, client_id: int, lr: float) -> np.ndarray:
    """FeedSign's client: per step the sign of the two-point estimate, then theta -= lr * sign * z."""
    theta, grads = theta0.clone(), []
    for k in range(method.tau):
        batch = _batch(100 * client_id + 10 + k)
        [z] = [_z(method, s) for s in method.step_seeds(1, k)]
        g = _loss_at(module, method, theta + EPS * z, batch) - _loss_at(
            module, method, theta - EPS * z, batch
        )
        g /= 2 * EPS
        theta = theta - lr * np.sign(g) * z
        grads.append(g)
    return np.asarray(grads)


def test_feedsign_votes_are_signs_and_the_update_is_the_weighted_majority_sign():
    lr = 1e-3
    module, method, snapshot = _setup("feedsign", tau=4)
    theta0 = _flat(method.global_params())
    wires = [_client(method, module, snapshot, c) for c in (0, 1, 2)]
    votes = [method.decode_uplink(1, w)[1] for w in wires]
    for c, v in enumerate(votes):
        g = _feedsign_votes(module, method, theta0, c, lr)
        snapshot.restore()
        clear = np.abs(g) > 1e-2  # a sign the float32 re-statement cannot get wrong
        assert set(v.tolist()) <= {-1.0, 1.0} and np.array_equal(v[clear], np.sign(g[clear]))
    counts = {0: 1, 1: 1, 2: 3}  # odd total weight: no tie; client 2 outweighs the other two
    down, _ = method.aggregate_train(1, list(enumerate(wires)), counts)
    expected = [np.sign(sum(counts[c] * votes[c][k] for c in counts)) for k in range(method.tau)]
    assert method._decode(1, down).tolist() == expected and np.array_equal(expected, votes[2])
    method.apply_downlink(1, down)
    step = sum(expected[k] * _z(method, method.step_seeds(1, k)[0]) for k in range(method.tau))
    torch.testing.assert_close(_flat(method.global_params()), theta0 - lr * step, rtol=0, atol=1e-6)


def test_majority_against_a_count_and_ties_by_a_seeded_coin():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, tau = int(rng.integers(1, 6)), 7
        votes = [rng.choice([-1.0, 1.0], tau) for _ in range(n)]
        counts = rng.integers(1, 4, n).tolist()
        for equal in (False, True):
            w = [1] * n if equal else counts
            tally = [sum(w[c] * votes[c][k] for c in range(n)) for k in range(tau)]
            assert majority(votes, counts, "mean", equal).tolist() == [np.sign(t) for t in tally]
        plus = [sum(v[k] > 0 for v in votes) for k in range(tau)]  # the median's sign: one vote each
        assert majority(votes, counts, "median").tolist() == [np.sign(2 * p - n) for p in plus]
    _, method, _ = _setup("feedsign", tau=32, fed={"equal_weights": True})
    tie = method.server_rule(1, [np.ones(32, np.float32), -np.ones(32, np.float32)], [1, 1])
    assert set(tie.tolist()) == {-1.0, 1.0}  # every step tied: a fair coin per step, not always +1
    assert np.array_equal(tie, method.server_rule(1, [np.ones(32), -np.ones(32)], [1, 1]))  # seeded


@pytest.mark.parametrize(
    ("name", "tau", "expected"), [("decomfl", 3, 32 + 4 * 3 * 5 + 4), ("feedsign", 10, 32 + 2 + 4)]
)
def test_payload_bytes_are_the_encoded_lengths(name, tau, expected):
    hp = {"zo_perturbations": 5} if name == "decomfl" else {}
    module, method, snapshot = _setup(name, tau=tau, **hp)
    wire = _client(method, module, snapshot, 0)
    assert len(wire) == expected == method.max_uplink_bytes() == method.summary()["uplink_bytes_max"]
    down, _ = method.aggregate_train(1, [(0, wire)], {0: 5})
    assert len(down) == expected  # the same tau x width values down (dense: every scalar is nonzero)


def _recrc(wire: bytes) -> bytes:
    body = wire[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


CORRUPTIONS = [
    (lambda m, w: w[:-3], "truncated", "truncated"),
    (lambda m, w: w[:-1] + bytes([w[-1] ^ 1]), "corrupt", "checksum"),
    (lambda m, w: w + b"\0", "oversize", "largest legal"),
]


@pytest.mark.parametrize("name", ["decomfl", "feedsign"])
def test_malformed_uplinks_are_refused_by_name(name):
    module, method, snapshot = _setup(name, tau=3)
    wire = _client(method, module, snapshot, 0)
    for corrupt, reason, match in CORRUPTIONS:
        down, screening = method.aggregate_train(1, [(0, corrupt(method, wire))], {0: 5})
        [r] = screening.rejected
        assert (r.client, r.reason) == (0, reason) and re.search(match, r.detail) and not screening.accepted
    assert method.aggregate_train(2, [(0, wire)], {0: 5})[1].rejected[0].reason == "wrong_round"
    assert method.aggregate_train(1, [(1, wire)], {1: 5})[1].rejected[0].reason == "client_mismatch"
    _, other, _ = _setup(name, tau=3, fed={"seed": 4})  # another federation's seed schedule
    assert other.aggregate_train(1, [(0, wire)], {0: 5})[1].rejected[0].reason == "wrong_pool"


def test_decomfl_refuses_scalars_no_honest_client_sends():
    _, method, _ = _setup("decomfl", tau=2)
    huge = encode_uplink(Uplink(1, 0, np.array([1e9, 0], np.float32)), method.fingerprint)
    [r] = method.aggregate_train(1, [(0, huge)], {0: 5})[1].rejected
    assert r.reason == "out_of_bound" and "honest bound" in r.detail
    wire = encode_uplink(Uplink(1, 0, np.array([1.0, 2.0], np.float32)), method.fingerprint)
    nan = _recrc(wire[:-8] + struct.pack("<f", float("nan")) + wire[-4:])
    assert method.aggregate_train(1, [(0, nan)], {0: 5})[1].rejected[0].reason == "non_finite"


def test_feedsign_refuses_anything_but_one_vote_bit_per_step():
    _, method, _ = _setup("feedsign", tau=3)
    fp = method.fingerprint
    scalars = encode_uplink(Uplink(1, 0, np.zeros(3, np.float32)), fp)  # a (sparse, empty) scalar payload
    votes = encode_uplink(Uplink(1, 0, np.array([1, -1, 1], np.float32)), fp, signs=True)
    padded = _recrc(votes[:-5] + bytes([votes[-5] | 0x80]) + votes[-4:])  # a bit beyond the 3 votes
    empty = encode_uplink(Uplink(1, 0, np.zeros(3, np.float32)), fp, signs=True)  # no votes at all
    for wire, match in ((scalars, "unknown encoding"), (padded, "padding"), (empty, "one vote per step")):
        [r] = method.aggregate_train(1, [(0, wire)], {0: 5})[1].rejected
        assert r.reason == "malformed" and re.search(match, r.detail), r.detail
    assert method.decode_uplink(1, votes)[1].tolist() == [1, -1, 1]


@pytest.mark.parametrize("name", ["decomfl", "feedsign"])
def test_a_node_that_missed_rounds_replays_them_to_the_servers_exact_weights(name):
    module, server, snapshot = _setup(name, tau=2)
    for r in (1, 2):
        wires = [(c, _client(server, module, snapshot, c, r)) for c in (0, 1)]
        server.apply_downlink(r, server.aggregate_train(r, wires, {0: 2, 1: 3})[0])
        snapshot.save()
    trained = [p.clone() for p in server.global_params()]
    _, node, _ = _setup(name, tau=2)
    passes = node.catch_up(0, [(r, server.downlink(r)) for r in (1, 2)])
    assert all(torch.equal(a, b) for a, b in zip(trained, node.global_params(), strict=True))
    assert passes == sum(server.replay_cost(1, 2)[0]) > 0 and server.replay_cost(1, 2)[1] is None
    _, resumed, _ = _setup(name, tau=2)
    resumed.load_state_dict(server.state_dict())
    resumed.restore_global()
    assert all(torch.equal(a, b) for a, b in zip(trained, resumed.global_params(), strict=True))


def test_two_flipping_voters_of_five_cannot_turn_an_agreeing_honest_majority():
    _, feedsign, _ = _setup("feedsign", tau=16, fed={"equal_weights": True})
    honest = np.where(np.random.default_rng(1).random(16) < 0.5, -1.0, 1.0).astype(np.float32)
    down = feedsign.server_rule(1, [honest] * 3 + [-honest] * 2, [1] * 5)
    assert np.array_equal(down, honest)  # and whatever they send, each step moves by lr * z at most
    _, decomfl, _ = _setup("decomfl", tau=16, fed={"aggregation": "median"})
    _, mean, _ = _setup("decomfl", tau=16)
    g = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    attack = [-100 * g[0], -100 * g[1]]  # flipped, scaled, inside the honest bound
    med = decomfl.server_rule(1, [*g, *attack], [1] * 5)
    assert np.all((med >= g.min(0)) & (med <= g.max(0)))  # the median stays inside the honest values
    assert np.max(np.abs(mean.server_rule(1, [*g, *attack], [1] * 5))) > 10 * np.max(np.abs(g))
