"""Every method as a unit, without Lightning: a client overfits a batch, the server's update moves the
global model, payload bytes are what the wire format says, and malformed payloads are rejected and counted."""

from __future__ import annotations

import re

import pytest
import torch

from kit.federation.messages import MessageError
from kit.methods import METHODS, FedSettings, build_method
from kit.methods.base import NO_UPDATE
from kit.module import FedKSeedModule
from kit.snapshot import WeightSnapshot

from .conftest import tiny_llama

# learning rates that overfit one batch of the tiny Llama within `STEPS` steps
LR = {"fedkseed": 2e-3, "fedkseed-pro": 2e-3, "fedzo": 2e-3, "fedavg": 1e-2, "fedit": 1e-2}
LR.update({"fedit-sgd": 1.0, "fedptuning": 3e-2, "fedprompt": 1e-1, "ferret": 1e-2})
LR.update({"decomfl": 2e-3, "feedsign": 1e-3})
STEPS = {"fedkseed": 100, "fedkseed-pro": 100, "fedzo": 100, "decomfl": 100, "feedsign": 100}
# Ferret rebuilds the update from K random directions per block: K well above the tiny model's 8 seeds
SEEDS = {"ferret": 64}
PEFT = ("fedit", "fedit-sgd", "fedptuning", "fedprompt")


def _batch(seed: int = 0) -> dict:
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :5] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _setup(name: str, **hp):
    hp = {"lr": LR[name], "zo_eps": 1e-3, "num_virtual_tokens": 4, "lora_dropout": 0.0} | hp
    module = FedKSeedModule(model="unused", method=name, prompt_encoder_dropout=0.0, **hp)
    method = build_method(
        name,
        module.hparams,
        FedSettings(seed=0, local_steps=STEPS.get(name, 20), num_seeds=SEEDS.get(name, 8)),
    )
    module.net = method.prepare(tiny_llama())
    snapshot = WeightSnapshot(method.global_params(), "memory")
    snapshot.save()
    return module, method, snapshot


def _train_client(method, module, snapshot, client_id: int, batch: dict, server_round: int = 1):
    client = method.client(server_round, client_id, module.batch_loss, snapshot.saved)
    losses = [client.step(batch, i).loss for i in range(method.fed.local_steps)]
    wire = client.finish()
    snapshot.restore()
    return losses, wire


@pytest.mark.parametrize("name", METHODS)
def test_client_lowers_its_loss_and_the_global_update_keeps_it(name):
    module, method, snapshot = _setup(name)
    batch = _batch()
    with torch.no_grad():
        before = float(module.batch_loss(batch))
        start = [p.clone() for p in method.global_params()]
    losses, wire = _train_client(method, module, snapshot, 0, batch)
    assert sum(losses[-5:]) / 5 < losses[0]
    down, screening = method.aggregate_train(1, [(0, wire)], {0: 10})
    assert [a.client for a in screening.accepted] == [0] and not screening.rejected
    metrics = method.apply_downlink(1, down)
    with torch.no_grad():
        after = float(module.batch_loss(batch))
    assert after < before - 0.02, (before, after)
    assert any(not torch.equal(a, p) for a, p in zip(start, method.global_params(), strict=True))
    assert isinstance(metrics, dict)


@pytest.mark.parametrize("name", ["fedavg", "fedit", "fedzo"])
def test_server_averages_clients_weighted_by_sample_count(name):
    module, method, snapshot = _setup(name)
    global_start = [p.clone() for p in method.global_params()]
    wires, finals = [], []
    for cid, seed in ((0, 1), (1, 2)):
        client = method.client(1, cid, module.batch_loss, snapshot.saved)
        for i in range(3):
            client.step(_batch(seed), i)
        finals.append([p.detach().clone() for p in method.global_params()])
        wires.append(client.finish())
        snapshot.restore()
    down, _ = method.aggregate_train(1, [(1, wires[1]), (0, wires[0])], {0: 1, 1: 3})  # any arrival order
    method.apply_downlink(1, down)
    for g0, a, b, got in zip(global_start, *finals, method.global_params(), strict=True):
        expected = 0.25 * a + 0.75 * b  # FedAvg of the clients' weights, by sample count 1 : 3
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert g0.shape == got.shape


@pytest.mark.parametrize("wire_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", PEFT)
def test_peft_payload_bytes_agree_with_peft_trainable_count(name, wire_dtype):
    module, method, snapshot = _setup(name, wire_dtype=wire_dtype)
    trainable, _ = module.net.get_nb_trainable_parameters()  # peft's own count
    _, wire = _train_client(method, module, snapshot, 0, _batch())
    itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[wire_dtype]
    # layout: 24-byte header, per tensor (u16 name length, name, u8 ndim, u32 dims), values, crc32
    table = sum(
        2 + len(n.encode()) + 1 + 4 * p.dim() for n, p in module.net.named_parameters() if p.requires_grad
    )
    assert len(wire) == 24 + table + trainable * itemsize + 4
    assert method.summary()["shared_parameters"] == trainable


def test_fedkseed_uplink_is_k_scalars_at_most():
    module, method, snapshot = _setup("fedkseed")
    _, wire = _train_client(method, module, snapshot, 0, _batch())
    assert len(wire) <= method.summary()["uplink_bytes_dense"] == 36 + 4 * 8


def _rejected(method, server_round: int, uplinks, num_samples) -> list[tuple[int, str, str]]:
    down, screening = method.aggregate_train(server_round, uplinks, num_samples)
    if not screening.accepted:
        assert down == NO_UPDATE  # nothing accepted: the round changes nothing
    return [(r.client, r.reason, r.detail) for r in screening.rejected]


@pytest.mark.parametrize(
    ("corrupt", "reason", "match"),
    [
        (lambda w: w[:-10], "truncated", "truncated"),
        (lambda w: w[:20], "truncated", "truncated|shorter"),
        (lambda w: w[:-1] + bytes([w[-1] ^ 1]), "corrupt", "checksum"),
        (lambda w: w + b"\0", "oversize", "largest legal"),
    ],
)
@pytest.mark.parametrize("name", ["fedit", "fedzo"])
def test_malformed_tensor_uplinks_are_rejected(name, corrupt, reason, match):
    module, method, snapshot = _setup(name)
    _, wire = _train_client(method, module, snapshot, 0, _batch())
    [(client, got, detail)] = _rejected(method, 1, [(0, corrupt(wire))], {0: 10})
    assert (client, got) == (0, reason) and re.search(match, detail)


def test_uplinks_for_another_round_client_or_adapter_are_rejected():
    module, method, snapshot = _setup("fedit")
    _, wire = _train_client(method, module, snapshot, 0, _batch())
    assert _rejected(method, 2, [(0, wire)], {0: 10})[0][1] == "wrong_round"
    assert _rejected(method, 1, [(1, wire)], {1: 10})[0][1] == "client_mismatch"
    assert _rejected(method, 1, [(1, wire)], {0: 10})[0][1] == "unknown_client"
    other_module, other, other_snapshot = _setup("fedprompt")
    [(_, reason, detail)] = _rejected(other, 1, [(0, wire)], {0: 10})
    assert reason in ("oversize", "truncated", "malformed")  # another adapter: another layout
    assert other.apply_downlink(1, NO_UPDATE) == {}


def test_a_client_with_non_finite_weights_cannot_send_them():
    module, method, snapshot = _setup("fedavg")
    client = method.client(1, 0, module.batch_loss, snapshot.saved)
    with torch.no_grad():
        method.global_params()[0][0, 0] = float("nan")
    with pytest.raises(MessageError, match="NaN|non-finite"):
        client.finish()


def test_a_non_finite_loss_skips_the_first_order_step():
    module, method, snapshot = _setup("fedit")
    client = method.client(1, 0, lambda batch: torch.tensor(float("nan"), requires_grad=True), snapshot.saved)
    before = [p.clone() for p in method.global_params()]
    assert client.step(_batch(), 0).skipped
    assert all(torch.equal(a, p) for a, p in zip(before, method.global_params(), strict=True))


def test_checkpoint_state_restores_the_global_parameters():
    module, method, snapshot = _setup("fedit")
    _, wire = _train_client(method, module, snapshot, 0, _batch())
    method.apply_downlink(1, method.aggregate_train(1, [(0, wire)], {0: 10})[0])
    state = method.state_dict()
    trained = [p.clone() for p in method.global_params()]
    fresh_module, fresh, _ = _setup("fedit")
    fresh.load_state_dict(state)
    fresh.restore_global()
    assert all(torch.equal(a, b) for a, b in zip(trained, fresh.global_params(), strict=True))


def test_fedit_sgd_refuses_another_optimizer():
    with pytest.raises(ValueError, match="fedit-sgd trains with SGD"):
        _setup("fedit-sgd", optimizer="adam")


def test_unknown_method_names_the_flag():
    with pytest.raises(ValueError, match="--method"):
        build_method("fedsomething", {}, FedSettings())
