import numpy as np
import pytest
import torch

from kit.federation.aggregate import aggregate, client_weights, pro_probabilities
from kit.federation.messages import Downlink, Uplink, decode_downlink, encode_downlink
from kit.federation.seeds import SeedPool
from kit.federation.server import Server, sample_clients, sample_seed_indices
from kit.federation.sync import apply_scalars, merged_replay, replay, round_decay
from kit.zo.estimator import zo_step
from kit.zo.perturb import Perturber

from .conftest import tiny_llama

POOL = SeedPool(16, federation_seed=3)


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_client_weights_follow_sample_counts_or_are_equal():
    assert np.allclose(client_weights([10, 30]), [0.25, 0.75])
    assert np.allclose(client_weights([10, 30], equal=True), [0.5, 0.5])
    with pytest.raises(ValueError):
        client_weights([])


def test_aggregate_is_the_weighted_sum():
    a, b = np.arange(4.0), np.ones(4)
    assert np.allclose(aggregate([a, b], np.array([0.25, 0.75])), 0.25 * a + 0.75 * b)


def test_pro_probabilities_match_the_reference_formula():
    abs_sum = np.array([0.0, 2.0, 6.0, 0.0])
    count = np.array([1, 2, 3, 1])
    psi = np.array([0.0, 1.0, 2.0, 0.0])
    norm = psi / (2.0 + 1e-10)
    expected = np.exp(norm) / np.exp(norm).sum()
    assert np.allclose(pro_probabilities(abs_sum, count), expected)
    assert np.allclose(pro_probabilities(np.zeros(4), np.ones(4)), 0.25)  # round 1: uniform


def _reference_pro_probabilities(history: dict[int, list[float]], k: int, clip: float) -> np.ndarray:
    """A port of the reference's FedKSeed-Pro rule (server.py `calculate_probabilities`), from its
    per-step history: every seed's list starts with one 0 and gets every local step's g; the score
    is the mean |clip(g)| of the list, min-max normalised, then softmax."""
    means = np.array([np.mean(np.abs(np.clip(history[j], -clip, clip))) for j in range(k)])
    norm = (means - means.min()) / (means.max() - means.min() + 1e-10)
    return np.exp(norm) / np.exp(norm).sum()


def test_pro_probabilities_equal_the_reference_per_step_history():
    """Clients that draw a seed at most once per round send per-seed sums equal to the per-step g, so
    the server's history (per client and touched seed) must give the reference's probabilities."""
    rng = np.random.default_rng(7)
    server, clip = Server(POOL, pro=True, bias_loss_clip=2.0), 2.0
    history: dict[int, list[float]] = {j: [0.0] for j in range(16)}
    for rnd in range(1, 5):
        ups = []
        for client in range(3):
            acc = np.zeros(16, dtype=np.float32)
            for j in rng.choice(16, size=5, replace=False):  # 5 local steps, distinct seeds
                g = np.float32(rng.normal(scale=2.0) or 0.5)  # some beyond the clip, never 0
                acc[j] = g
                history[int(j)].append(float(g))
            ups.append(Uplink(rnd, client, acc))
        down = server.aggregate_train(ups, [1, 2, 3])
        expected = _reference_pro_probabilities(history, 16, clip)
        np.testing.assert_allclose(down.probabilities, expected, rtol=1e-6, atol=0)
    assert not np.allclose(down.probabilities, 1 / 16)


def test_server_history_clips_magnitudes_and_feeds_probabilities():
    server = Server(POOL, pro=True, bias_loss_clip=1.0)
    up = np.zeros(16, dtype=np.float32)
    up[2], up[5] = 5.0, -0.5
    down = server.aggregate_train([Uplink(1, 0, up)], [10])
    assert down.round == 1 and server.abs_sum[2] == 1.0 and server.abs_sum[5] == 0.5
    assert down.probabilities.argmax() == 2 and down.probabilities.argmin() not in (2, 5)


def test_aggregation_order_does_not_depend_on_arrival_order():
    ups = [Uplink(1, c, np.random.default_rng(c).normal(size=16).astype(np.float32)) for c in (4, 1, 9)]
    a = Server(POOL).aggregate_train(ups, [3, 5, 7])
    b = Server(POOL).aggregate_train(ups[::-1], [7, 5, 3])
    assert np.array_equal(a.scalars, b.scalars)


def test_client_and_seed_sampling_are_seeded_by_round():
    assert sample_clients(1, 5, 200, 0.05) == sample_clients(1, 5, 200, 0.05)
    assert sample_clients(1, 5, 200, 0.05) != sample_clients(1, 6, 200, 0.05)
    assert len(sample_clients(1, 5, 200, 0.05)) == 10
    p = np.zeros(16, dtype=np.float32)
    p[3] = 1.0
    assert set(sample_seed_indices(1, 2, 3, 50, p, 16).tolist()) == {3}


def test_global_update_equals_theta_minus_lr_sum_g_z():
    model = tiny_llama()
    params = list(model.parameters())
    before = _weights(model)
    pert = Perturber(params, chunk_size=1000)
    scalars = np.zeros(16, dtype=np.float32)
    scalars[[1, 7]] = [0.5, -2.0]
    assert apply_scalars(pert, POOL, scalars, lr=0.1) == 2
    z1, z7 = pert.z(POOL[1]), pert.z(POOL[7])
    for p, w, a, b in zip(params, before, z1, z7, strict=True):
        torch.testing.assert_close(p, w - 0.1 * (0.5 * a - 2.0 * b), rtol=1e-6, atol=1e-7)


def test_replay_matches_server_model_bit_for_bit():
    server_model, client_model = tiny_llama(), tiny_llama()
    server_p = Perturber(list(server_model.parameters()), chunk_size=1000)
    rng = np.random.default_rng(0)
    wire = []
    for r in range(1, 6):
        g = np.zeros(16, dtype=np.float32)
        touched = rng.choice(16, 4, replace=False)
        g[touched] = rng.normal(size=4)
        apply_scalars(server_p, POOL, g, lr=0.01, decay=1e-3)
        wire.append(encode_downlink(Downlink(r, g), POOL.fingerprint))
    missed = [decode_downlink(d, 16, POOL.fingerprint, expected_round=i + 1) for i, d in enumerate(wire)]
    replay(Perturber(list(client_model.parameters()), chunk_size=1000), POOL, missed, lr=0.01, decay=1e-3)
    for a, b in zip(server_model.parameters(), client_model.parameters(), strict=True):
        assert torch.equal(a, b)
    merged_model = tiny_llama()
    passes = merged_replay(Perturber(list(merged_model.parameters()), chunk_size=1000), POOL, missed, lr=0.01)
    assert passes <= 16
    with pytest.raises(ValueError, match="merged replay cannot fold weight decay"):
        merged_replay(Perturber(list(tiny_llama().parameters())), POOL, missed, lr=0.01, decay=1e-3)
    # the merged path without weight decay: equal to an exact replay without decay up to rounding
    exact_model = tiny_llama()
    replay(Perturber(list(exact_model.parameters()), chunk_size=1000), POOL, missed, lr=0.01)
    for a, b in zip(exact_model.parameters(), merged_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_global_update_with_weight_decay_decays_matrices_once():
    model = tiny_llama(dtype=torch.float64)
    params = list(model.parameters())
    before = _weights(model)
    pert = Perturber(params, chunk_size=1000)
    scalars = np.zeros(16, dtype=np.float32)
    scalars[[2, 9, 11]] = [1.5, -0.5, 0.25]
    assert apply_scalars(pert, POOL, scalars, lr=0.1, decay=0.01) == 3
    zs = [[z.double() for z in pert.z(POOL[j])] for j in (2, 9, 11)]
    for i, (p, w) in enumerate(zip(params, before, strict=True)):
        keep = 0.99 if w.dim() >= 2 else 1.0  # never biases or norm scales
        step = 0.1 * (1.5 * zs[0][i] - 0.5 * zs[1][i] + 0.25 * zs[2][i])
        torch.testing.assert_close(p, keep * w - step, rtol=0, atol=1e-12)
    untouched = tiny_llama(dtype=torch.float64)  # a round whose steps were all skipped still decays
    assert (
        apply_scalars(Perturber(list(untouched.parameters())), POOL, np.zeros(16, np.float32), 0.1, 0.01) == 1
    )
    for p, w in zip(untouched.parameters(), before, strict=True):
        torch.testing.assert_close(p, (0.99 if w.dim() >= 2 else 1.0) * w, rtol=0, atol=1e-12)


def test_server_decay_per_round_equals_a_clients_tau_steps():
    """With a flat loss (g = 0) a client's tau ZO steps only decay; the global update decays the same."""
    lr, wd, tau = 0.01, 0.5, 7
    client, server = tiny_llama(dtype=torch.float64), tiny_llama(dtype=torch.float64)
    client_p = Perturber(list(client.parameters()), chunk_size=1000)
    for step in range(tau):
        out = zo_step(
            client_p, lambda: torch.tensor(1.0), 0, POOL[step % 16], eps=1e-3, lr=lr, weight_decay=wd
        )
        assert out.projected_grad == 0.0 and not out.skipped
    server_p = Perturber(list(server.parameters()), chunk_size=1000)
    apply_scalars(server_p, POOL, np.zeros(16, np.float32), lr, round_decay(lr, wd, tau))
    for (name, a), b in zip(client.named_parameters(), server.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    assert not torch.equal(next(client.parameters()), next(tiny_llama(dtype=torch.float64).parameters()))


def test_replay_refuses_a_gap():
    with pytest.raises(ValueError, match="consecutive"):
        replay(
            Perturber(list(tiny_llama().parameters())),
            POOL,
            [Downlink(1, np.zeros(16, np.float32)), Downlink(3, np.zeros(16, np.float32))],
            lr=0.1,
        )


def test_server_state_round_trips_and_checks_the_pool():
    server = Server(POOL, pro=True)
    server.aggregate_train([Uplink(1, 0, np.ones(16, dtype=np.float32))], [1])
    other = Server(POOL, pro=True)
    other.load_state_dict(server.state_dict())
    assert other.server_round == 1 and np.array_equal(other.probabilities(), server.probabilities())
    with pytest.raises(ValueError, match="seed pool"):
        Server(SeedPool(16, 4)).load_state_dict(server.state_dict())
