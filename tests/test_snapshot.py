"""Where the round's global weights wait while clients train (kit/snapshot.py): in device memory on a
GPU when they fit with room to spare, else in pinned host memory; host memory or a file on a CPU.
Every placement restores the exact bytes."""

from __future__ import annotations

import pytest
import torch

from kit import snapshot
from kit.snapshot import GiB, WeightSnapshot, choose_placement, fits_on_device


def test_a_snapshot_fits_on_the_device_only_with_a_quarter_of_the_card_left():
    assert fits_on_device(5 * GiB, free=100 * GiB, total=141 * GiB)  # 1.3B fp32 on an H200
    assert not fits_on_device(5 * GiB, free=10 * GiB, total=24 * GiB)  # 10 - 5 < 6 (a quarter)
    assert fits_on_device(5 * GiB, free=11 * GiB, total=24 * GiB)
    assert not fits_on_device(1 * GiB, free=2.5 * GiB, total=8 * GiB)  # at least 2 GiB stay free


def test_placement_follows_the_device_and_its_free_memory(monkeypatch):
    cuda = torch.device("cuda", 0)
    assert choose_placement("disk", cuda, 1) == "disk"
    assert choose_placement("memory", torch.device("cpu"), 1) == "host"
    monkeypatch.setattr(snapshot, "device_free_bytes", lambda device: (80 * GiB, 80 * GiB))
    assert choose_placement("memory", cuda, 30 * GiB) == "device"
    assert choose_placement("memory", cuda, 70 * GiB) == "pinned host"


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_restore_gives_the_saved_bytes(tmp_path, where):
    params = [torch.randn(3, 5), torch.tensor([-0.0, float("nan"), 1e-40])]
    snap = WeightSnapshot(params, where, tmp_path / "g.bin")
    snap.save()
    before = [p.clone() for p in params]
    for p in params:
        p.add_(1.0)
    snap.restore()
    assert snap.placement == {"memory": "host", "disk": "disk"}[where]
    assert all(
        torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(params, before, strict=True)
    )
    assert all(
        torch.equal(a.view(torch.int32), b.view(torch.int32))
        for a, b in zip(snap.saved(), before, strict=True)
    )
    snap.cleanup()
    assert not (tmp_path / "g.bin").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("free_gib", [None, 0])
def test_cuda_snapshot_on_the_device_or_pinned_restores_exactly(monkeypatch, free_gib):
    if free_gib is not None:  # a card too full for a device copy
        monkeypatch.setattr(snapshot, "device_free_bytes", lambda device: (free_gib * GiB, 80 * GiB))
    params = [torch.randn(1000, 100, device="cuda"), torch.randn(7, device="cuda")]
    snap = WeightSnapshot(params, "memory")
    snap.save()
    before = [p.clone() for p in params]
    for p in params:
        p.mul_(3.0)
    snap.restore()
    assert snap.placement == ("device" if free_gib is None else "pinned host")
    assert all(torch.equal(a, b) for a, b in zip(params, before, strict=True))
    assert all(c.device.type == ("cuda" if free_gib is None else "cpu") for c in snap.saved())
