"""Client-level DP (kit/privacy): clipping bounds a client's pull, the noise has its configured scale,
epsilon is the dp-accounting library's, and the flags are checked naming the flag."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant

from kit.errors import UsageError
from kit.federation.messages import DOWNLINK, Uplink, decode_downlink, encode_uplink
from kit.federation.tensors import decode_tensors
from kit.methods.base import FedSettings
from kit.methods.fedkseed import FedKSeed
from kit.methods.first_order import FirstOrder
from kit.privacy import PrivacyConfig, clip_l2
from kit.privacy.accountant import central_epsilon, local_epsilon
from kit.rounds.config import FedConfig
from kit.rounds.privacy import attach_dp, dp_mechanism, participations

ZO_HP = {"lr": 1e-3, "weight_decay": 0.0, "zo_eps": 1e-3, "grad_clip": None}
FO_HP = {"wire_dtype": "float32", "optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.0}


def _privacy(mode="central", clip=1.0, sigma=0.5, **kw) -> PrivacyConfig:
    return PrivacyConfig(dp_mode=mode, dp_clip=clip, dp_noise_multiplier=sigma, **kw)


def _fedkseed(privacy: PrivacyConfig, clients=20, fraction=0.25, k=64, tau=4) -> FedKSeed:
    fed = FedSettings(seed=3, local_steps=tau, num_seeds=k, screen_bound=False)
    method = FedKSeed(ZO_HP, fed)
    attach_dp(method, privacy, fed.seed, clients, fraction, rounds=10)
    return method


def _g(method: FedKSeed, rnd: int, scalars: dict[int, np.ndarray], sampled) -> np.ndarray:
    """FedKSeed's server rule over these uplinks (client -> K scalars); the decoded G."""
    fp = method.pool.fingerprint
    ups = [(c, encode_uplink(Uplink(rnd, c, s.astype(np.float32)), fp)) for c, s in scalars.items()]
    down, screening = method.aggregate_train(rnd, ups, {c: 10 for c in sampled})
    assert len(screening.accepted) == len(scalars)
    return decode_downlink(down, method.pool.k, fp, expected_round=rnd).scalars.astype(np.float64)


def _planned(method: FedKSeed, rnd: int, c: int, values: np.ndarray) -> np.ndarray:
    """A client's honest-looking uplink: `values` at the seeds it was to touch."""
    out = np.zeros(method.pool.k)
    np.add.at(out, method.planned_seeds(rnd, c), values)
    return out


def test_clip_l2_scales_only_vectors_beyond_the_bound():
    x = np.array([3.0, 4.0])
    assert np.allclose(clip_l2(x, 1.0), [0.6, 0.8]) and np.allclose(clip_l2(x, 10.0), x)


@pytest.mark.parametrize("mode", ["central", "local"])
def test_a_huge_fedkseed_uplink_moves_g_by_at_most_the_clip(mode):
    clip = 2.0
    method = _fedkseed(_privacy(mode, clip=clip, sigma=0.3))
    sampled = [1, 4, 7, 9, 12]
    rnd = 1
    honest = {c: _planned(method, rnd, c, np.full(4, 0.02 * (c + 1))) for c in sampled}
    if mode == "local":  # each client clips and noises its own uplink; the huge one's is clipped too
        acc = honest[9].copy()
        honest = {
            c: method.dp.local(rnd, c, v, np.unique(method.planned_seeds(rnd, c))) for c, v in honest.items()
        }
        huge = method.dp.local(rnd, 9, acc * 1e9, np.unique(method.planned_seeds(rnd, 9)))
        moved_by = np.linalg.norm(huge - honest[9])
        assert moved_by <= 2 * clip + 1e-6  # the two clipped vectors differ by at most 2C; the noise cancels
        return
    g_honest = _g(method, rnd, honest, sampled)
    g_huge = _g(_fedkseed(_privacy(mode, clip=clip, sigma=0.3)), rnd, {**honest, 9: honest[9] * 1e9}, sampled)
    g_none = _g(
        _fedkseed(_privacy(mode, clip=clip, sigma=0.3)),
        rnd,
        {c: v for c, v in honest.items() if c != 9},
        sampled,
    )
    m = len(sampled)
    # the same noise in all three: the huge client's effect is its clipped vector / m, at most C / m
    assert np.linalg.norm(g_huge - g_none) <= clip / m * (1 + 1e-5)
    assert np.linalg.norm(g_huge - g_none) == pytest.approx(clip / m, rel=1e-5)  # and it is clipped to C
    assert np.linalg.norm(g_honest - g_none) < clip / m


def test_a_huge_tensor_uplink_moves_the_fedavg_mean_by_at_most_the_clip():
    clip, m = 0.5, 4

    def aggregate(uplinks: dict[int, float]) -> torch.Tensor:
        method = FirstOrder("fedavg", FO_HP, FedSettings(seed=3, screen_bound=False), None, "sgd")
        torch.manual_seed(0)
        method.prepare(torch.nn.Linear(3, 2))
        attach_dp(method, _privacy(clip=clip, sigma=0.2), 3, 16, 0.25, rounds=5)
        glob = {n: p.detach().clone() for n, p in method.named}
        ups = [
            (c, method.encode_uplink(1, c, {n: g + shift for n, g in glob.items()}))
            for c, shift in uplinks.items()
        ]
        down, _ = method.aggregate_train(1, ups, {c: 10 for c in range(m)})
        msg = decode_tensors(down, DOWNLINK, method.spec, "float32", expected_round=1)
        return torch.cat([(msg.tensors[n] - g).flatten() for n, g in glob.items()])

    honest = {0: 0.01, 1: -0.02, 2: 0.03}
    with_huge, without = aggregate({**honest, 3: 1e6}), aggregate(honest)
    moved_by = float(torch.linalg.vector_norm((with_huge - without).double()))
    assert moved_by == pytest.approx(clip / m, rel=1e-4)  # clipped to C, divided by the fixed m


def test_central_noise_has_the_configured_scale_on_the_planned_seeds_only():
    """Noise alone (no uplink arrived): G * m ~ N(0, (sigma * 2C)^2) on the round's planned seeds.
    K = 2^17 with 40 clients x 4000 steps: n ~ 9.5e4 noisy coordinates, so the sample std's relative
    error is ~ 1/sqrt(2n) = 0.23%: tolerance 1% (4 sigma); the mean within 5 std / sqrt(n)."""
    clip, sigma = 1.5, 0.8
    method = _fedkseed(_privacy(clip=clip, sigma=sigma), clients=40, fraction=1.0, k=2**17, tau=4000)
    sampled = list(range(40))
    g = _g(method, 1, {}, sampled) * 40
    support = np.unique(np.concatenate([method.planned_seeds(1, c) for c in sampled]))
    off = np.setdiff1d(np.arange(method.pool.k), support)
    assert len(support) > 90_000 and len(off) > 30_000 and not g[off].any()
    noise, std = g[support], sigma * 2 * clip
    assert noise.std() == pytest.approx(std, rel=0.01)
    assert abs(noise.mean()) < 5 * std / math.sqrt(len(noise))
    again = _g(
        _fedkseed(_privacy(clip=clip, sigma=sigma), clients=40, fraction=1.0, k=2**17, tau=4000),
        1,
        {},
        sampled,
    )
    assert np.array_equal(again * 40, g)  # seeded: a rerun (or resume) draws the same noise
    other = _g(_fedkseed(_privacy(clip=clip, sigma=sigma, dp_seed=7), 40, 1.0, 2**17, 4000), 1, {}, sampled)
    assert not np.array_equal(other * 40, g)  # dp_seed picks another stream


def test_local_noise_has_the_configured_scale():
    mech = dp_mechanism(_privacy("local", clip=0.5, sigma=1.2), 3, 10, 0.5, 4)
    x = mech.local(1, 3, np.zeros(200_000), np.arange(200_000))
    assert x.std() == pytest.approx(1.2 * 2 * 0.5, rel=0.01)  # n = 2e5: relative error ~ 0.16%


def test_central_epsilon_is_the_librarys_and_below_the_plain_gaussian_bound():
    n, m, sigma, rounds, delta = 100, 5, 1.1, 50, 1e-5
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(n, m, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(event, rounds)
    eps = central_epsilon(sigma, n, m, rounds, delta)
    assert eps == accountant.get_epsilon(delta)
    # independently: without sampling the rounds are 50 Gaussian mechanisms, RDP 50 a / (2 sigma^2),
    # eps <= min_a 50 a / (2 sigma^2) + log(1/delta) / (a - 1); sampling 5 of 100 can only lower it
    classic = min(
        rounds * a / (2 * sigma**2) + math.log(1 / delta) / (a - 1) for a in np.linspace(1.01, 200, 20000)
    )
    assert eps < classic
    assert local_epsilon(sigma, rounds, delta) < classic
    assert local_epsilon(sigma, rounds, delta) == pytest.approx(
        classic, rel=0.15
    )  # same mechanism, tighter conversion


def test_target_epsilon_gives_the_smallest_sigma_that_meets_it():
    privacy = PrivacyConfig(dp_mode="central", dp_clip=1.0, dp_target_epsilon=4.0)
    mech = dp_mechanism(privacy, 42, 100, 0.1, 30)
    assert mech.epsilon(30) <= 4.0 < central_epsilon(mech.noise_multiplier * 0.99, 100, 10, 30, 1e-5)
    eps = [mech.epsilon(r) for r in (1, 10, 30)]
    assert eps == sorted(eps) and eps[0] > 0


def test_local_epsilon_counts_a_clients_rounds():
    counts = participations(42, 20, 0.25, 12)
    sampled = [set(np.random.default_rng([42, r, 0xC11E]).choice(20, 5, replace=False)) for r in range(1, 13)]
    assert counts[-1] == max(sum(c in s for s in sampled) for c in range(20))
    mech = dp_mechanism(_privacy("local", sigma=2.0), 42, 20, 0.25, 12)
    assert mech.epsilon(12) == local_epsilon(2.0, counts[-1], 1e-5)


def test_an_unreachable_target_is_refused_naming_the_knobs():
    privacy = PrivacyConfig(dp_mode="local", dp_clip=1.0, dp_target_epsilon=0.01)
    with pytest.raises(UsageError, match=r"--fed.dp_target_epsilon 0.01 cannot be met.*trainer.max_epochs"):
        dp_mechanism(privacy, 42, 10, 1.0, 300)


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        ({"dp_mode": "global"}, "--fed.dp_mode"),
        ({"dp_mode": "central", "dp_noise_multiplier": 1.0}, "--fed.dp_clip"),
        ({"dp_mode": "central", "dp_clip": 1.0}, "--fed.dp_noise_multiplier and --fed.dp_target_epsilon"),
        ({"dp_mode": "local", "dp_clip": 1.0, "dp_noise_multiplier": -1.0}, "--fed.dp_noise_multiplier"),
        ({"dp_clip": 1.0}, "--fed.dp_clip need"),
        ({"dp_mode": "central", "dp_clip": 1, "dp_target_epsilon": 1, "dp_delta": 2}, "--fed.dp_delta"),
        (
            {"dp_mode": "central", "dp_clip": 1, "dp_target_epsilon": 1, "aggregation": "median"},
            "--fed.aggregation",
        ),
    ],
)
def test_bad_privacy_flags_are_refused_naming_the_flag(flags, flag):
    with pytest.raises((UsageError, ValueError), match=flag):
        FedConfig.from_flags(flags)


@pytest.mark.parametrize("name", ["decomfl", "feedsign", "ferret"])
def test_methods_without_a_dp_rule_refuse_dp_rather_than_send_un_noised(name):
    from kit.methods import REGISTRY

    hp = {**ZO_HP, **FO_HP, "lr": 1e-3, "zo_perturbations": 1, "zo_estimator": "central"}
    hp |= {"server_lr": 1.0, "grad_accumulation": 1}
    method = REGISTRY[name].build(hp, FedSettings(num_seeds=8, local_steps=2))
    for mode in ("central", "local"):
        with pytest.raises(UsageError, match=f"--fed.dp_mode {mode} is not implemented for {name}"):
            attach_dp(method, _privacy(mode), 1, 10, 0.5, 3)
    attach_dp(method, PrivacyConfig(), 1, 10, 0.5, 3)  # off: nothing to refuse
    assert method.dp is None


def test_central_dp_refuses_fedkseed_pro():
    method = FedKSeed(ZO_HP, FedSettings(num_seeds=8), pro=True)
    with pytest.raises(UsageError, match="--fed.dp_mode central does not cover fedkseed-pro"):
        attach_dp(method, _privacy(), 1, 10, 0.5, 3)
    attach_dp(
        method, _privacy("local"), 1, 10, 0.5, 3
    )  # local: the server's use of uplinks is post-processing
    assert method.dp.mode == "local"
