"""Secure aggregation (kit/privacy/secagg.py; on Flower kit/deploy/secagg.py): the masks cancel in the
sum and only there, and a LocalGrid run with it equals the run without it up to the fixed-point encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kit.deploy.client_app import app as client_app
from kit.deploy.local_grid import LocalGrid
from kit.deploy.messages import TrainReply
from kit.federation.messages import MessageError, decode_uplink
from kit.privacy import secagg

from .test_deploy_flower import _run_config, _strategy


def _masked(xs: dict[int, np.ndarray], rnd: int = 3) -> dict[int, np.ndarray]:
    keys = {c: secagg.key_pair() for c in xs}
    return {
        c: secagg.mask(
            secagg.encode(x), c, {p: secagg.shared_secret(keys[c][0], keys[p][1]) for p in xs if p != c}, rnd
        )
        for c, x in xs.items()
    }


def test_masks_cancel_in_the_sum_to_the_quantization():
    rng = np.random.default_rng(0)
    xs = {c: rng.normal(size=1000) * 50 for c in (2, 5, 9, 14)}
    masked = _masked(xs)
    total = secagg.decode(secagg.sum_masked(list(masked.values())))
    exact = sum(xs.values())
    assert np.abs(total - exact).max() <= len(xs) * secagg.QUANTUM / 2 + 1e-9 * np.abs(exact).max()
    # without one client the masks do not cancel: the partial sum is noise in the ring
    partial = secagg.decode(secagg.sum_masked([masked[c] for c in (2, 5, 9)]))
    assert np.abs(partial - (xs[2] + xs[5] + xs[9])).min() > 1e3


def test_a_masked_vector_hides_its_values():
    """One masked vector decodes to ring-uniform values: mean |v| ~ 2^62 / 2^32 / 2 (here > 1e8), its
    correlation with the true vector under 0.1 (n = 4000: the null's std is 0.016)."""
    rng = np.random.default_rng(1)
    xs = {c: rng.normal(size=4000) for c in (0, 1, 2)}
    alone = secagg.decode(_masked(xs)[1])
    assert np.abs(alone).mean() > 1e8
    assert abs(np.corrcoef(alone, xs[1])[0, 1]) < 0.1


def test_encode_refuses_values_beyond_the_ring():
    with pytest.raises(ValueError, match="below"):
        secagg.encode(np.array([3e9]))


class _Spy(LocalGrid):
    """A LocalGrid that keeps the payload of every train reply the server pulls."""

    payloads: list[tuple[int, bytes]]

    def pull_messages(self, message_ids):
        got = list(super().pull_messages(message_ids))
        for m in got:
            if not m.has_error() and "uplink" in m.content:
                up = TrainReply.from_values(dict(m.content["uplink"]))
                self.payloads.append((up.client, up.payload))
        return got


def _flower(tmp_path, tiny_model_dir, data_root, name: str, **kw):
    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    rc["overrides"] = json.dumps({**json.loads(rc["overrides"]), "method": "fedkseed", "fed.fraction": 0.15})
    grid = _Spy(client_app, rc, num_nodes=3, state_root=tmp_path / f"nodes-{name}")
    grid.payloads = []
    strategy = _strategy(rc, tmp_path / name, **kw)
    return strategy.run(grid), strategy, grid


def test_secagg_on_localgrid_gives_the_server_the_sum_only(tiny_model_dir, data_root, tmp_path):
    plain, s_plain, g_plain = _flower(tmp_path, tiny_model_dir, data_root, "plain")
    sec, s_sec, g_sec = _flower(tmp_path, tiny_model_dir, data_root, "secagg", secagg=True)
    k = s_plain.method.pool.k
    fp = s_plain.method.pool.fingerprint
    assert sec["clients_per_round"] >= 3 and len(g_sec.payloads) == len(g_plain.payloads) >= 6
    # what the server received under SecAgg: masked vectors of K + 1 ring words, no uplink
    ups = dict(g_plain.payloads)
    for client, payload in g_sec.payloads:
        assert len(payload) == 8 * (k + 1)
        with pytest.raises(MessageError):
            decode_uplink(payload, k, fp)
        acc = decode_uplink(ups[client], k, fp).scalars
        assert np.abs(secagg.decode(secagg.from_bytes(payload, k + 1))[:k] - acc).min() > 1e3
    # the same rounds: G within the quantization of m summands / their weight, same losses and touch
    down = [torch.load(s.ckpt, weights_only=True)["method_state"]["downlinks"] for s in (s_plain, s_sec)]
    for g_p, g_s in zip(*down, strict=True):
        g_p, g_s = g_p.numpy().astype(np.float64), g_s.numpy().astype(np.float64)
        assert np.abs(g_p - g_s).max() <= 1e-6 * np.abs(g_p).max() + 1e-9  # float32 rounding of G dominates
    assert sec["train_loss_per_round"] == plain["train_loss_per_round"]
    assert sec["rounds"] == plain["rounds"] == 2
    # here the encoding's error (<= 7 * 2^-33 / total weight) stays below G's float32 spacing: same G, same
    # bits (a deterministic check of this configuration, not a property of every run)
    assert sec["global_weights_sha256"] == plain["global_weights_sha256"]


class _LostReply(_Spy):
    """Round 1's train reply of one client never reaches the server (its node failed after masking)."""

    lost: int

    def pull_messages(self, message_ids):
        got = list(super().pull_messages(message_ids))
        keep = []
        for m in got:
            if not m.has_error() and "uplink" in m.content:
                up = TrainReply.from_values(dict(m.content["uplink"]))
                if up.client == self.lost and m.metadata.group_id == "1":
                    continue
            keep.append(m)
        return keep


def test_a_client_lost_after_masking_is_recovered_from_the_shares(tiny_model_dir, data_root, tmp_path):
    """Client 20 (round 1) trains and masks, but its uplink never arrives: the others reveal its mask
    key's shares and their own seeds' shares, and the server gets the sum of the arrived clients, the
    same G as a plain server that aggregates them."""
    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    rc["overrides"] = json.dumps({**json.loads(rc["overrides"]), "method": "fedkseed", "fed.fraction": 0.15})
    runs = {}
    for name, kw in (("plain", {}), ("secagg", {"secagg": True})):
        grid = _LostReply(client_app, rc, num_nodes=3, state_root=tmp_path / f"nodes-{name}")
        grid.payloads, grid.lost = [], 20  # a client of round 1 (test above: clients 1, 20, 26, ...)
        strategy = _strategy(rc, tmp_path / name, round_timeout=3.0, **kw)
        runs[name] = (strategy.run(grid), strategy)
    (plain, s_plain), (sec, s_sec) = runs["plain"], runs["secagg"]
    assert sec["rounds"] == 2 and sec["rounds_without_update"] == 0
    assert sec["missing_clients_per_round"] == plain["missing_clients_per_round"]
    down = [torch.load(s.ckpt, weights_only=True)["method_state"]["downlinks"] for s in (s_plain, s_sec)]
    for g_p, g_s in zip(*down, strict=True):
        g_p, g_s = g_p.numpy().astype(np.float64), g_s.numpy().astype(np.float64)
        assert g_p.any() and np.abs(g_p - g_s).max() <= 1e-6 * np.abs(g_p).max()
    assert sec["global_weights_sha256"] == plain["global_weights_sha256"]


@pytest.mark.slow
@pytest.mark.long  # 81-384 s; the LocalGrid SecAgg tests above run the same protocol by default
def test_secagg_over_real_processes_equals_the_plain_localgrid_run(tiny_model_dir, data_root, tmp_path):
    """`flower-superlink` + 3 `flower-supernode`s on 127.0.0.1, each node's work in its worker: the
    protocol's records cross real gRPC and the worker's socket; same G bits as in one process."""
    from kit.deploy.local import LocalDeployment

    rc = _run_config(tiny_model_dir, data_root, tmp_path)
    rc["overrides"] = json.dumps({**json.loads(rc["overrides"]), "method": "fedkseed", "fed.fraction": 0.15})
    plain, _, _ = _flower(tmp_path, tiny_model_dir, data_root, "plain")
    run_dir = tmp_path / "dep"
    with LocalDeployment(run_dir, num_nodes=3) as dep:
        dep.submit({**rc, "run-dir": str(run_dir), "round-timeout": 600.0, "secagg": True})
        sec = dep.wait_summary(2, 600)
    assert sec["global_weights_sha256"] == plain["global_weights_sha256"]
    assert sec["train_loss_per_round"] == plain["train_loss_per_round"]
    assert all(b == 8 * 65 for r in sec["per_round"] for b in r["uplink_payload_bytes"])  # masked, K = 64
