"""Evaluation of the global model during a federation: held-out eval loss and zero-shot Rouge-L.

Both are defined by the run's data config: the eval loss runs on the datamodule's held-out set, and
Rouge-L scores the same held-out Dolly category (all of it when `--data.eval_size` is null) or the
NI test tasks. The model is put in eval mode for both (dropout off) and back afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import torch

from kit.heap import release_free_memory


@contextmanager
def eval_mode(net: torch.nn.Module):
    """`net` in eval mode inside the block, in its previous mode after it."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def exact_sum(trainer: pl.Trainer, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes of tensors where each process filled only its own entries (exact)."""
    if trainer.world_size == 1:
        return tensor
    return trainer.strategy.reduce(tensor.to(trainer.strategy.root_device), reduce_op="sum").cpu()


@torch.no_grad()
def eval_loss(trainer: pl.Trainer, pl_module, batch_size: int) -> float:
    """Mean per-example response loss on the held-out set, batches split over processes."""
    release_free_memory()
    loader = trainer.datamodule.eval_dataloader(batch_size)
    losses = torch.zeros(len(loader.dataset), dtype=torch.float64)
    start = 0
    with eval_mode(pl_module.net):
        for i, batch in enumerate(loader):
            n = batch["input_ids"].shape[0]
            if i % trainer.world_size == trainer.global_rank:
                batch = {k: v.to(pl_module.device) for k, v in batch.items() if torch.is_tensor(v)}
                losses[start : start + n] = pl_module.example_losses(batch).double().cpu()
            start += n
    losses = exact_sum(trainer, losses)
    finite = losses[torch.isfinite(losses)]
    return float(finite.mean()) if finite.numel() else float("nan")


def rouge(
    trainer: pl.Trainer,
    pl_module,
    suites: list[str] | None,
    limit: int | None,
    out_dir: Path,
    progress: bool,
) -> dict[str, dict]:
    """Zero-shot Rouge-L results per suite (process 0 generates; others get {})."""
    if not trainer.is_global_zero:
        return {}
    from eval.evaluate import evaluate
    from kit.models import load_tokenizer
    from kit.paths import data_root

    dm = trainer.datamodule
    with eval_mode(pl_module.net):
        return evaluate(
            pl_module.net,
            load_tokenizer(pl_module.hparams.model),
            suites or [dm.dataset],
            data_root=data_root(dm.data_root),
            limit=limit,
            seed=dm.seed,
            dolly_size=dm.eval_size,
            heldout_category=dm.heldout_category,
            out_dir=out_dir,
            progress=progress,
        )
