"""The LightningModule: the client's model, its loss, and one local step per batch (manual optimisation).

The federated-loop Callback (`kit.loop`) hands the module the current client's update (`client`, a
`kit.methods.ClientUpdate`); `training_step` runs one step of it: a ZO step for FedKSeed, FedZO,
DeComFL and FeedSign, a backpropagation step for the first-order baselines.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import lightning.pytorch as pl
import torch

from kit.lm_head import example_losses, head_inputs
from kit.methods import METHODS, ClientUpdate
from kit.models import load_model
from kit.ranges import check_model_ranges
from kit.zo.master import SEED_METHODS, check_master_dtype, hp_master_dtype

MethodName = Literal[METHODS]  # the registry's names (kit/methods/__init__.py), as CLI choices


class FedKSeedModule(pl.LightningModule):
    """A causal LM trained by the federated method `method` (the client side of every method).

    Args:
        model: Hub id, local directory, or the embedded default `smollm2-135m`.
        method: the federated method (set it with the top-level `--method`): a name of
            `kit.methods.REGISTRY` (see `fedkseed fit --help`).
        lr: learning rate of the client's local steps (reference: 3e-7 ZO, 3e-4 FedIT).
        zo_eps: ZO methods: perturbation scale epsilon (reference 5e-4).
        weight_decay: ZO: decoupled decay on matrices only, never biases or norms, at every local
            step; FedKSeed's global update decays the matrices by the same tau steps' factor once per
            round; first-order: the optimizer's weight decay (reference 0).
        grad_clip: ZO: skip a step whose |L+ - L-| exceeds this; first-order: clip the gradient
            norm to this. null or <= 0: off (the reference's default -100).
        distribution: ZO perturbation distribution, "gaussian" or "rademacher".
        keep_z: ZO: keep z between the three passes of a step (one extra copy of the weights, fewer
            draws); off regenerates z in every pass and needs no memory beyond the weights.
        zo_backend: how z is computed. One z (Philox-4x32-10 + float32 Box-Muller), the same bits on
            every device: "native" (C kernels, CPU; needs a C compiler), "cuda" (one fused Triton
            kernel, NVIDIA GPUs), "portable" (plain torch ops, any device, slower). "auto": native on
            CPU (portable without a compiler); on NVIDIA GPUs cuda once its start-up self-test (known
            answers from native) passed on the device, else portable with a one-line notice.
            "torch" is the legacy z (a torch.Generator per chunk): its values depend on the device
            type and, on CUDA, the GPU model, so its runs rebuild only on the same hardware.
        forward_dtype: precision of the forward passes (autocast): "bfloat16" / "float16" run the
            two losses of a ZO step (and eval) in half precision on GPUs, as the reference trains in
            fp16; the master weights, z and every update stay float32, so only the losses (hence
            the scalars g) change, by half-precision rounding. On CPUs keep float32.
        master_dtype: FedKSeed / FedKSeed-Pro: dtype the trained weights are stored in. "float32"
            (default: the kit's fused float32 path). "float16" reproduces the reference, which loads
            the model in float16 and moves it out of place in float16 (z rounded from the kit's one
            float32 z; forwards then run in that dtype too); "bfloat16" the same in bfloat16. Every
            perturbation, restore and update rounds to it, so updates below a weight's spacing are
            lost as in the reference (docs/precision.md). Needs --model.weight_decay 0. The other
            methods train float32 weights whatever it says (summary.json records the dtype used).
        optimizer: first-order methods: "adam", "adamw" or "sgd" (null: the method's own, Adam for
            fedit/fedptuning/fedprompt/fedavg, SGD for fedit-sgd).
        momentum: SGD momentum (FedIT-SGD: 0, plain SGD).
        lora_r: LoRA rank (FedIT 8).
        lora_alpha: LoRA scaling alpha (FedIT 16).
        lora_dropout: LoRA dropout (FedIT 0.05).
        lora_targets: modules that get LoRA adapters (null: q, k, v, o, gate, up, down projections).
        num_virtual_tokens: FedPTuning / FedPrompt virtual tokens (20).
        prompt_encoder_hidden_size: FedPTuning MLP encoder width (null: the model's hidden size).
        prompt_encoder_dropout: FedPTuning encoder dropout (0.1).
        wire_dtype: tensor payloads (all methods but FedKSeed): dtype of the values on the wire.
        server_lr: Ferret: the server's step on the reconstructed update (allen4747/Ferret --slr_max 10).
        grad_accumulation: Ferret: batches whose gradients add up before each SGD step (--n_accum, 4 there).
        zo_perturbations: DeComFL: perturbations P per local step, one scalar each (its default 1).
        zo_estimator: DeComFL: "central" (L+ - L-) / 2 eps, or "forward" (L+ - L) / eps.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        method: MethodName = "fedkseed",
        lr: float = 3e-7,
        zo_eps: float = 5e-4,
        weight_decay: float = 0.0,
        grad_clip: float | None = None,
        distribution: Literal["gaussian", "rademacher"] = "gaussian",
        keep_z: bool = False,
        zo_backend: Literal["auto", "native", "cuda", "portable", "torch"] = "auto",
        forward_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        master_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        optimizer: Literal["adam", "adamw", "sgd"] | None = None,
        momentum: float = 0.0,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_targets: list[str] | None = None,
        num_virtual_tokens: int = 20,
        prompt_encoder_hidden_size: int | None = None,
        prompt_encoder_dropout: float = 0.1,
        wire_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        server_lr: float = 10.0,
        grad_accumulation: int = 1,
        zo_perturbations: int = 1,
        zo_estimator: Literal["central", "forward"] = "central",
    ) -> None:
        super().__init__()
        check_model_ranges(locals())
        check_master_dtype(master_dtype, weight_decay if method in SEED_METHODS else 0.0)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the method's global state (see kit.methods)
        self.net: torch.nn.Module | None = None
        self.client: ClientUpdate | None = None  # the current client's update, set by the loop

    def configure_model(self) -> None:
        if self.net is not None:
            return
        dtype = hp_master_dtype(self.hparams)
        self.net = load_model(self.hparams.model, dtype=dtype, device=self.trainer.strategy.root_device)

    def configure_optimizers(self):
        return None  # each client makes its own (fresh every round), see kit.methods

    def _autocast(self):
        if self.hparams.forward_dtype == "float32":
            return nullcontext()
        dtype = getattr(torch, self.hparams.forward_dtype)
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _response_window(self, labels: torch.Tensor) -> int:
        """Positions the LM head must see: from the one before the first labelled token to the end."""
        labelled = (labels != -100).any(0).nonzero()
        first = max(int(labelled[0]) if labelled.numel() else labels.shape[1] - 1, 1)
        return labels.shape[1] - first + 1

    def _forward(self, batch: dict, keep: int, **kwargs):
        with self._autocast():
            return self.net(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                logits_to_keep=keep,
                **kwargs,
            )

    def response_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 logits that predict the labelled tokens, and those labels.

        The LM head runs only from the first labelled position on (`logits_to_keep`): prompt
        positions need no vocabulary projection, which saves a large share of a small model's forward.
        """
        labels = batch["labels"]
        keep = self._response_window(labels)
        out = self._forward(batch, keep)
        return out.logits[:, -keep:-1].float(), labels[:, labels.shape[1] - keep + 1 :]

    def batch_loss(self, batch: dict) -> torch.Tensor:
        """Mean cross-entropy over the batch's response tokens (labels != -100)."""
        logits, labels = self.response_logits(batch)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    @torch.no_grad()
    def example_losses(self, batch: dict) -> torch.Tensor:
        """Per-example mean response-token loss (for eval; independent of the other examples' count).

        The LM head and cross-entropy run one example at a time (`kit.lm_head`): the same values as
        on the whole batch's logits, without a [batch x positions x vocab] tensor.
        """
        labels = batch["labels"]
        keep = self._response_window(labels)
        with head_inputs(self.net) as captured:
            self._forward(batch, keep, use_cache=False)  # no KV cache to build for the whole eval batch
        head = self.net.get_output_embeddings()
        return example_losses(
            captured.hidden[:, :-1], labels[:, labels.shape[1] - keep + 1 :], head, self._autocast
        )

    def training_step(self, batch: dict, batch_idx: int) -> dict | None:
        if int(batch["client_id"]) < 0:
            return None  # a padding step: this process has fewer clients this round than another
        if self.client is None:
            raise RuntimeError(
                "FedKSeedModule trains only under the federated-loop callback (kit.loop.FederatedLoop)"
            )
        return {"step": self.client.step(batch, int(batch["local_step"]))}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the global model is theta_0 + the method's global state kept by the callback
        checkpoint["state_dict"] = {}
