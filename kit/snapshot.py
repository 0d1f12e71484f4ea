"""The global weights every client of a round starts from, kept in host memory or in a file.

On an accelerator host memory is free of device memory; on a CPU the file keeps the process at one
copy of the weights (the page cache is not the process's memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch


class WeightSnapshot:
    """Save and restore a fixed list of float32 parameters, exactly (raw bytes)."""

    def __init__(
        self, params: list[torch.Tensor], where: Literal["memory", "disk"], path: Path | None = None
    ):
        if where == "disk" and path is None:
            raise ValueError("a disk snapshot needs a path")
        self.params, self.where, self.path = params, where, path
        self._copies: list[torch.Tensor] | None = None

    @torch.no_grad()
    def save(self) -> None:
        if self.where == "memory":
            pin = self.params[0].device.type == "cuda"
            if self._copies is None:
                self._copies = [torch.empty(p.shape, dtype=p.dtype, pin_memory=pin) for p in self.params]
            for c, p in zip(self._copies, self.params, strict=True):
                c.copy_(p)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for p in self.params:
                f.write(memoryview(p.detach().cpu().reshape(-1).view(torch.uint8).numpy()))
        tmp.replace(self.path)

    @torch.no_grad()
    def restore(self) -> None:
        if self.where == "memory":
            for c, p in zip(self._copies, self.params, strict=True):
                p.copy_(c)
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
        if self.where == "memory":
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
