"""Master weights in float16 / bfloat16 with the reference's out-of-place arithmetic.

    from kit.zo.master import perturb_, update_
    zq = z.to(torch.float16)            # the kit's float32 z, rounded to the master dtype
    perturb_(p, zq, eps)                # p = p + eps * zq                  (the reference's perturbation)
    update_(p, zq, lr, g)               # p = p - lr * (g * zq)             (the reference's update)

The authors' code (zhenqincn/FedKSeed, optimizers/mezo_optimizer.py, `MeZOFramework`) loads the model
in float16, draws z in the weights' dtype and moves every weight out of place:
`_zo_perturb_parameters`: param.data = param.data + scaling_factor * zo_eps * z, and `zo_update`:
param.data = param.data - lr * (projected_grad * z) (the server's rebuild in server.py calls the same
`zo_update` with each seed's accumulated scalar). Python evaluates `scaling_factor * zo_eps` as a
double first, then each tensor op rounds once to the weights' dtype: torch computes a half-precision
op in float32 with the Python scalar rounded to float32 (CPU and CUDA alike), then rounds the result
to float16. The functions here are those expressions, op for op, so their bits are the reference's
for the same z. A step's +eps, -2 eps, +eps passes are therefore lossy (theta + eps z - 2 eps z + eps
z is not theta after rounding): the weights drift within a client's local steps, as in the reference.

Weight decay is not carried: the reference's decay rule (by parameter name) differs from the kit's
(by shape) and every paper recipe trains without it; a non-float32 master refuses weight decay.
"""

from __future__ import annotations

import torch

from kit.errors import UsageError

MASTER_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
REFERENCE_DTYPES = (torch.float16, torch.bfloat16)  # the dtypes moved by the reference's arithmetic
SEED_METHODS = ("fedkseed", "fedkseed-pro")  # the methods whose master dtype is selectable


def dtype_name(dtype: torch.dtype) -> str:
    """'float16' for torch.float16 (the name runs and seed files record)."""
    return str(dtype).removeprefix("torch.")


def master_dtype_of(params: list[torch.Tensor] | torch.nn.Module) -> str:
    """The one dtype of the trained weights, by name; mixed dtypes are refused."""
    tensors = list(params.parameters()) if isinstance(params, torch.nn.Module) else list(params)
    dtypes = {p.dtype for p in tensors}
    if len(dtypes) != 1:
        names = sorted(map(dtype_name, dtypes))
        raise ValueError(f"the trained weights mix dtypes {names}: load them in one dtype")
    return dtype_name(dtypes.pop())


def check_master_dtype(name: str, weight_decay: float = 0.0) -> torch.dtype:
    """The torch dtype of master dtype `name`, refusing what the reference's arithmetic cannot carry."""
    if name not in MASTER_DTYPES:
        raise UsageError(f"--model.master_dtype {name!r} must be one of {', '.join(MASTER_DTYPES)}")
    if name != "float32" and weight_decay:
        raise UsageError(
            f"--model.master_dtype {name} follows the reference's arithmetic, which the kit runs without "
            f"weight decay; set --model.weight_decay 0 (the paper's) or --model.master_dtype float32"
        )
    return MASTER_DTYPES[name]


def master_dtype_for(method: str, requested: str) -> str:
    """The dtype `method` trains in: `requested` for FedKSeed / FedKSeed-Pro, float32 for the rest
    (their optimizers and payloads are the kit's float32 ones; a shared recipe may name float16)."""
    return requested if method in SEED_METHODS else "float32"


def hp_master_dtype(hp) -> str:
    """The dtype a run with module hyperparameters `hp` (a mapping) trains in."""
    return master_dtype_for(hp["method"], hp.get("master_dtype") or "float32")


def check_recorded(recorded: str | None, current: str, where: str) -> None:
    """Refuse to replay `where` (recorded master dtype; None = made before it was recorded, float32)
    on weights of another dtype."""
    recorded = recorded or "float32"
    if recorded != current:
        raise UsageError(
            f"{where} was trained with {recorded} master weights, but the weights here are {current}: "
            f"use --model.master_dtype {recorded}"
        )


def perturb_(p: torch.Tensor, zq: torch.Tensor, scale: float) -> None:
    """p = p + scale * zq, as the reference's perturbation (zq in p's dtype; one rounding per op)."""
    p.copy_(p + scale * zq)


def update_(p: torch.Tensor, zq: torch.Tensor, lr: float, grad: float) -> None:
    """p = p - lr * (grad * zq), as the reference's update without weight decay (one rounding per op:
    grad * zq, then lr * that, then the subtraction)."""
    p.copy_(p - lr * (grad * zq))
