"""The global weights every client of a round starts from, kept in memory or in a file.

"memory" on a GPU keeps the copy in device memory when it fits with room to spare (a restore is then
a device-to-device copy, no PCIe and no disk), else in pinned host memory (one DMA per restore); on a
CPU "memory" is host memory, and "disk" (the CPU default, kit/loop.py) keeps the process at one copy
of the weights (the page cache is not the process's memory). `placement` says which was chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

GiB = 1 << 30
# What a snapshot in device memory must leave free: the forwards' activations, eval's KV cache and
# the allocator's fragmentation (ZO keeps no gradients or optimizer state).
DEVICE_HEADROOM_FRACTION = 0.25
DEVICE_HEADROOM_MIN = 2 * GiB

Placement = Literal["device", "pinned host", "host", "disk"]


def fits_on_device(nbytes: int, free: int, total: int) -> bool:
    """Whether a copy of `nbytes` leaves a quarter of the card (at least 2 GiB) of its `free` bytes."""
    return nbytes + max(DEVICE_HEADROOM_FRACTION * total, DEVICE_HEADROOM_MIN) <= free


def device_free_bytes(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device, counting memory torch's allocator holds but does not use."""
    free, total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), total


def choose_placement(where: Literal["memory", "disk"], device: torch.device, nbytes: int) -> Placement:
    """Where a snapshot of `nbytes` of weights on `device` lives for `where`."""
    if where == "disk":
        return "disk"
    if device.type != "cuda":
        return "host"
    return "device" if fits_on_device(nbytes, *device_free_bytes(device)) else "pinned host"


class WeightSnapshot:
    """Save and restore a fixed list of parameters, exactly (raw bytes)."""

    def __init__(
        self, params: list[torch.Tensor], where: Literal["memory", "disk"], path: Path | None = None
    ):
        if where == "disk" and path is None:
            raise ValueError("a disk snapshot needs a path")
        self.params, self.where, self.path = params, where, path
        self.nbytes = sum(p.numel() * p.element_size() for p in params)
        # a file is where it is; memory is placed at the first save (a fresh disk snapshot reads a saved file)
        self.placement: Placement | None = "disk" if where == "disk" else None
        self._copies: list[torch.Tensor] | None = None

    @torch.no_grad()
    def save(self) -> None:
        if self.placement is None:
            self.placement = choose_placement(self.where, self.params[0].device, self.nbytes)
        if self.placement != "disk":
            if self._copies is None:
                pin = self.placement == "pinned host"
                device = self.params[0].device if self.placement == "device" else torch.device("cpu")
                self._copies = [
                    torch.empty(p.shape, dtype=p.dtype, device=device, pin_memory=pin) for p in self.params
                ]
            for c, p in zip(self._copies, self.params, strict=True):
                c.copy_(p, non_blocking=self.placement == "pinned host")
            if self.placement == "pinned host":
                torch.cuda.synchronize(self.params[0].device)  # the copies are complete before use
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for p in self.params:
                f.write(memoryview(p.detach().cpu().reshape(-1).view(torch.uint8).numpy()))
        tmp.replace(self.path)

    @torch.no_grad()
    def restore(self) -> None:
        if self.placement != "disk":
            for c, p in zip(self._copies, self.params, strict=True):
                p.copy_(c, non_blocking=self.placement == "pinned host")  # ordered on p's stream
            return
        with open(self.path, "rb") as f:
            for p in self.params:
                if p.device.type == "cpu":
                    f.readinto(memoryview(p.reshape(-1).view(torch.uint8).numpy()))
                else:
                    host = torch.empty(p.numel() * p.element_size(), dtype=torch.uint8)
                    f.readinto(memoryview(host.numpy()))
                    p.copy_(host.view(p.dtype).view(p.shape))

    @torch.no_grad()
    def saved(self):
        """The saved values, one tensor per parameter in order (read from the file one at a time)."""
        if self.placement != "disk":
            yield from self._copies
            return
        with open(self.path, "rb") as f:
            for p in self.params:
                host = torch.empty(p.shape, dtype=p.dtype)
                f.readinto(memoryview(host.reshape(-1).view(torch.uint8).numpy()))
                yield host

    def cleanup(self) -> None:
        self._copies = None
        if self.where == "disk" and self.path.exists():
            self.path.unlink()
