"""Identities that make a run rebuildable: the weights digest, theta_0's identity, and their checks.

A FedKSeed run is theta_0 plus its scalar history, so rebuilding it (resume, `fedkseed eval --run`,
`fedkseed materialize`) needs the same theta_0 and the same z (kit/zo/definition.py); each is
recorded with the run and checked before replay, and the replayed weights are checked after.
"""

from __future__ import annotations

import hashlib

import torch

from kit.errors import UsageError


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's weights in parameter order: equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def theta0_identity(model_id: str, net: torch.nn.Module) -> dict:
    """θ₀'s identity: the model id it was loaded from and its weights' digest."""
    return {"model": str(model_id), "sha256": weights_digest(net)}


def check_theta0(recorded: dict, current: dict, where: str) -> None:
    """Refuse to replay `where`'s history on another θ₀ (the error names both)."""
    if recorded["sha256"] != current["sha256"]:
        raise UsageError(
            f"{where} was trained from θ₀ = {recorded['model']} (weights sha256 {recorded['sha256'][:16]}…), "
            f"but the model loaded here is {current['model']} (sha256 {current['sha256'][:16]}…): load the "
            "run's base model (--model / --model.model)"
        )


def check_rebuilt(expected: str, model: torch.nn.Module, where: str) -> None:
    """Refuse a rebuilt model whose weights are not the recorded ones."""
    got = weights_digest(model)
    if got != expected:
        raise RuntimeError(
            f"weights rebuilt from {where} have sha256 {got[:16]}…, the run recorded {expected[:16]}…: "
            "another kit version or a corrupted history?"
        )
