"""`fed_ddp`: Lightning's DDP processes without the DistributedDataParallel wrapper.

ZO steps make no gradients, so there is nothing for DDP's reducer to all-reduce; wrapping would
only add per-forward buffer broadcasts, which deadlock when processes train different numbers of
clients. Each process keeps a plain model; the federated-loop callback exchanges one tensor per
round (the clients' K-vectors) through `strategy.reduce`.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch.nn import Module


class FederatedDDPStrategy(DDPStrategy):
    """DDP process group and launcher, plain (unwrapped) model."""

    strategy_name = "fed_ddp"

    def _setup_model(self, model: Module) -> Module:
        return model

    def _register_ddp_hooks(self) -> None:
        return None


if "fed_ddp" not in StrategyRegistry:
    StrategyRegistry.register("fed_ddp", FederatedDDPStrategy, description=FederatedDDPStrategy.__doc__)
