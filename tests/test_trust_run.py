"""One bad client under the default settings, through the real CLI: a 3e38 uplink (FedKSeed scalars,
FedAvg tensors) is rejected as `out_of_bound` and counted, and the run ends exactly where it would
have without that client's contribution; with the bound off, the collapse it causes is reported."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kit.cli import main
from kit.methods import fedkseed as fedkseed_mod
from kit.methods.tensor_payload import TensorPayloadMethod

from .conftest import fed_args

ROUNDS = 2
BAD_ROUND = 1


def _args(model_dir, data_root, run, method="fedkseed", extra=()):
    args = fed_args(model_dir, data_root, run, rounds=ROUNDS)
    return args + ["--method", method, "--fed.fraction", "0.1", "--fed.rouge_at_end", "false", *extra]


def _victim(data_root) -> int:
    """The client that misbehaves: the first one sampled in BAD_ROUND (fed seed 42, as fed_args)."""
    from kit.federation.server import sample_clients

    # every fed_args run has the same client count; read it from a sampling of the whole range
    return min(sample_clients(42, BAD_ROUND, 50, 0.1))


def _summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def _patch_scalar_uplink(monkeypatch, payload: str, bad_round: int = BAD_ROUND) -> list[int]:
    """Make the first client to finish in `bad_round` send `payload` ("3e38" scalars or "junk")."""
    hit: list[int] = []
    original = fedkseed_mod._FedKSeedClient.finish

    def finish(self):
        wire = original(self)
        if self.round != bad_round or hit:
            return wire
        hit.append(self.client_id)
        if payload == "junk":
            return b"junk"
        up = fedkseed_mod.Uplink(self.round, self.client_id, np.full(self.m.pool.k, 3e38, dtype=np.float32))
        return fedkseed_mod.encode_uplink(up, self.m.pool.fingerprint)

    monkeypatch.setattr(fedkseed_mod._FedKSeedClient, "finish", finish)
    return hit


def test_a_3e38_scalar_uplink_is_rejected_by_default_and_changes_nothing(
    tiny_model_dir, data_root, tmp_path, monkeypatch
):
    runs = {}
    for payload in ("3e38", "junk"):
        with monkeypatch.context() as m:
            hit = _patch_scalar_uplink(m, payload)
            runs[payload] = tmp_path / payload
            main(_args(tiny_model_dir, data_root, runs[payload]))
        assert len(hit) == 1
    bad, ref = _summary(runs["3e38"]), _summary(runs["junk"])
    assert bad["rejected_uplinks"]["out_of_bound"] == 1 and sum(bad["rejected_uplinks"].values()) == 1
    assert ref["rejected_uplinks"]["truncated"] == 1  # the reference: the same client's uplink lost
    rejected = bad["missing_clients_per_round"][BAD_ROUND - 1]["rejected"]
    assert rejected == {str(hit[0]): "out_of_bound"}
    assert bad["global_weights_sha256"] == ref["global_weights_sha256"]
    assert bad["eval_loss_per_round"] == ref["eval_loss_per_round"] and bad["divergence"] == []
    # the bound the run derived: tau * C / (2 eps) with tau 3, C = loss_range 100, eps 1e-2
    assert bad["uplink_scalar_bound"] == pytest.approx(3 * 100 / (2 * 1e-2), rel=1e-5)


def test_with_the_bound_off_the_collapse_is_reported_and_can_stop_the_run(
    tiny_model_dir, data_root, tmp_path, monkeypatch
):
    run = tmp_path / "off"
    with monkeypatch.context() as m:
        _patch_scalar_uplink(m, "3e38")
        main(_args(tiny_model_dir, data_root, run, extra=["--fed.screen_bound", "false"]))
    s = _summary(run)
    assert s["rejected_uplinks"]["out_of_bound"] == 0
    assert s["divergence"], "the collapse went unreported"
    first = s["divergence"][0]
    assert first["round"] == BAD_ROUND and first["loss"] == "eval"
    assert abs(first["value"] - math.log(49152)) <= 1e-3 and "uniform predictor" in first["why"]
    assert s["stopped_on_divergence"] is None and s["rounds"] == ROUNDS  # warned, not stopped

    stop = tmp_path / "stop"  # diverges in round 2 of 3: stops there, round 1's checkpoint kept
    with monkeypatch.context() as m:
        _patch_scalar_uplink(m, "3e38", bad_round=2)
        extra = ["--fed.screen_bound", "false", "--fed.stop_on_divergence", "true"]
        extra += ["--trainer.max_epochs", "3"]
        main(_args(tiny_model_dir, data_root, stop, extra=extra))
    s = _summary(stop)
    assert s["stopped_on_divergence"] == 2 and s["rounds"] == 2
    ckpt = torch.load(stop / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["callbacks"]["FederatedLoop"]["rounds_done"] == 1


def test_a_3e38_tensor_payload_is_rejected_by_default_and_changes_nothing(
    tiny_model_dir, data_root, tmp_path, monkeypatch
):
    runs = {}
    for payload in ("3e38", "junk"):
        hit: list[int] = []
        original = TensorPayloadMethod.encode_uplink

        def encode_uplink(
            self, server_round, client_id, tensors, payload=payload, hit=hit, original=original
        ):  # noqa: E501
            if server_round != BAD_ROUND or hit:
                return original(self, server_round, client_id, tensors)
            hit.append(client_id)
            if payload == "junk":
                return b"junk"
            huge = {n: torch.full_like(t, 3e38) for n, t in tensors.items()}
            return original(self, server_round, client_id, huge)

        with monkeypatch.context() as m:
            m.setattr(TensorPayloadMethod, "encode_uplink", encode_uplink)
            runs[payload] = tmp_path / payload
            main(_args(tiny_model_dir, data_root, runs[payload], method="fedavg"))
        assert len(hit) == 1
    bad, ref = _summary(runs["3e38"]), _summary(runs["junk"])
    assert bad["rejected_uplinks"]["out_of_bound"] == 1 and sum(bad["rejected_uplinks"].values()) == 1
    assert ref["rejected_uplinks"]["truncated"] == 1
    assert bad["global_weights_sha256"] == ref["global_weights_sha256"]
    assert bad["uplink_norm_ratio"] == 100.0 and bad["divergence"] == []
