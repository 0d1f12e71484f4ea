"""The LightningModule: manual optimisation, one zeroth-order step per batch, no autograd.

The federated-loop Callback (`kit.loop`) tells the module which seed each step uses
(`seed_choice`) and reads back the `ZOStep` that `training_step` returns.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import lightning.pytorch as pl
import torch

from kit.models import load_model
from kit.zo.estimator import ZOStep, zo_step
from kit.zo.perturb import Perturber


class FedKSeedModule(pl.LightningModule):
    """Full-parameter ZO fine-tuning of a causal LM (the client side of FedKSeed).

    Args:
        model: Hub id, local directory, or the embedded default `smollm2-135m`.
        lr: learning rate eta of the ZO-SGD step (reference 3e-7 for 1B-3B models).
        zo_eps: perturbation scale epsilon (reference 5e-4).
        weight_decay: decoupled decay on matrices only, never biases or norms (reference 0).
        grad_clip: skip a step whose |L+ - L-| exceeds this (reference: off).
        distribution: perturbation distribution, "gaussian" or "rademacher".
        keep_z: keep z between the three passes of a step (one extra copy of the weights, fewer
            draws); off regenerates z in every pass and needs no memory beyond the weights.
        zo_backend: generator of z: "native" (compiled Philox kernels, CPU, ~4x faster than
            torch's CPU generator; needs a C compiler), "torch" (a torch.Generator per chunk; CUDA
            or CPU), or "auto" = native on CPU, torch on accelerators. Part of z's definition:
            runs compare bit for bit only with the same backend and device type.
        forward_dtype: precision of the forward passes; master weights always stay float32.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        lr: float = 3e-7,
        zo_eps: float = 5e-4,
        weight_decay: float = 0.0,
        grad_clip: float | None = None,
        distribution: Literal["gaussian", "rademacher"] = "gaussian",
        keep_z: bool = False,
        zo_backend: Literal["auto", "torch", "native"] = "auto",
        forward_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    ) -> None:
        super().__init__()
        if lr <= 0 or zo_eps <= 0:
            raise ValueError(f"--model.lr ({lr}) and --model.zo_eps ({zo_eps}) must be > 0")
        if weight_decay < 0:
            raise ValueError(f"--model.weight_decay ({weight_decay}) must be >= 0")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the seed history, not the weights (see kit.loop)
        self.net: torch.nn.Module | None = None
        self.perturber: Perturber | None = None
        self.seed_choice: tuple[int, int] | None = None  # (index in the pool, seed), set per step

    def configure_model(self) -> None:
        if self.net is not None:
            return
        self.net = load_model(self.hparams.model, dtype="float32", device=self.trainer.strategy.root_device)
        self.net.requires_grad_(False)  # ZO needs no autograd graph
        backend = self.hparams.zo_backend
        if backend == "auto":
            backend = "native" if self.trainer.strategy.root_device.type == "cpu" else "torch"
        self.perturber = Perturber(
            list(self.net.parameters()),
            self.hparams.distribution,
            keep_z=self.hparams.keep_z,
            backend=backend,
        )

    def configure_optimizers(self):
        return None  # the ZO step is the optimiser

    def _autocast(self):
        if self.hparams.forward_dtype == "float32":
            return nullcontext()
        dtype = getattr(torch, self.hparams.forward_dtype)
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.no_grad()
    def response_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 logits that predict the labelled tokens, and those labels.

        The LM head runs only from the first labelled position on (`logits_to_keep`): prompt
        positions need no vocabulary projection, which saves a large share of a small model's forward.
        """
        labels = batch["labels"]
        labelled = (labels != -100).any(0).nonzero()
        first = max(int(labelled[0]) if labelled.numel() else labels.shape[1] - 1, 1)
        with self._autocast():
            out = self.net(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                logits_to_keep=labels.shape[1] - first + 1,
            )
        return out.logits[:, :-1].float(), labels[:, first:]

    def batch_loss(self, batch: dict) -> torch.Tensor:
        """Mean cross-entropy over the batch's response tokens (labels != -100)."""
        logits, labels = self.response_logits(batch)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    def example_losses(self, batch: dict) -> torch.Tensor:
        """Per-example mean response-token loss (for eval; independent of the other examples' count)."""
        logits, labels = self.response_logits(batch)
        tok = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        mask = (labels != -100).float()
        return (tok * mask).sum(1) / mask.sum(1)

    def training_step(self, batch: dict, batch_idx: int) -> dict | None:
        if int(batch["client_id"]) < 0:
            return None  # a padding step: this process has fewer clients this round than another
        if self.seed_choice is None:
            raise RuntimeError(
                "FedKSeedModule trains only under the federated-loop callback (kit.loop.FederatedLoop)"
            )
        index, seed = self.seed_choice
        step: ZOStep = zo_step(
            self.perturber,
            lambda: self.batch_loss(batch),
            index,
            seed,
            eps=self.hparams.zo_eps,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            grad_clip=self.hparams.grad_clip,
        )
        return {"zo": step}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The global model is theta_0 + the downlink history kept by the callback: a few KB per round.
        checkpoint["state_dict"] = {}
