"""What z is: its definition (recorded with every run) and the backend that computes it on a device.

    from kit.zo.definition import choose_backend, definition_of
    backend = choose_backend("auto", torch.device("cuda"))       # "cuda" once its self-test passed
    zdef = definition_of(backend, "cuda", 1 << 20, "gaussian")   # ZDefinition(family="philox", ...)

Three backends compute one definition, `philox` (Philox-4x32-10 + float32 Box-Muller, see
kit/zo/native/zkernel.c), bit for bit: `native` (C kernels, CPU), `cuda` (a Triton kernel, NVIDIA
GPUs) and `portable` (plain torch ops, any device). `torch` (a torch.Generator per chunk) is a
legacy definition of its own whose values depend on the device type and, on CUDA, the GPU model.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from kit.errors import UsageError

Backend = Literal["auto", "native", "cuda", "portable", "torch"]
BACKENDS = ("auto", "native", "cuda", "portable", "torch")
PHILOX = "philox"  # the family of native, cuda and portable
PHILOX_VERSION = 2  # kit.zo.native.VERSION = kit.zo.portable.VERSION
_notified = False


@dataclass(frozen=True)
class ZDefinition:
    """z's definition: a run rebuilds bit for bit only under the same one.

    family: "philox" (backends native, cuda, portable: one z on every device) or
        "torch.Generator/<device type>" (legacy).
    version: the family's definition version (philox: ZK_VERSION of zkernel.c; legacy: torch's).
    chunk_size: elements per chunk (each chunk has its own key).
    distribution: "gaussian" or "rademacher".
    backend: the backend that computed it in this run (recorded, not compared: every philox backend
        gives the same z).
    cuda_self_test: on a CUDA device, the outcome of the Triton kernel's start-up self-test
        (kit/zo/cuda.py `checked`): "passed (...)" or "failed: ..." (then `auto` ran portable);
        None where none ran. Recorded, not compared.
    """

    family: str
    version: str
    chunk_size: int
    distribution: str
    backend: str | None = field(default=None, compare=False)
    cuda_self_test: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> ZDefinition:
        return cls(
            str(data["family"]),
            str(data["version"]),
            int(data["chunk_size"]),
            str(data["distribution"]),
            data.get("backend"),
            data.get("cuda_self_test"),
        )

    def describe(self) -> str:
        return f"{self.family} v{self.version}, {self.distribution}, chunks of {self.chunk_size}"


def definition_of(backend: str, device_type: str, chunk_size: int, distribution: str) -> ZDefinition:
    """The definition a concrete backend computes on a device of `device_type`, with the backend and
    (on CUDA) the kernel's self-test outcome recorded alongside."""
    if backend == "torch":
        family, version = f"torch.Generator/{device_type}", torch.__version__
    else:
        family, version = PHILOX, str(PHILOX_VERSION)
    return ZDefinition(family, version, chunk_size, distribution, backend, _self_test_record(device_type))


def _self_test_record(device_type: str) -> str | None:
    """The cuda kernel's self-test outcome(s) in this process ("; "-joined if several devices)."""
    if device_type != "cuda" or "kit.zo.cuda" not in sys.modules:
        return None
    outcomes = sys.modules["kit.zo.cuda"].results()
    return "; ".join(f"{dev}: {r.record()}" for dev, r in outcomes.items()) or None


def _native_available() -> bool:
    from kit.zo import native

    return native.available()


def choose_backend(requested: str, device: torch.device, recorded: ZDefinition | None = None) -> str:
    """The concrete backend for `requested` on `device`, honouring a run's `recorded` definition.

    `auto` = native on a CPU (portable, with a one-line notice, where no C compiler builds it), the
    Triton kernel on NVIDIA GPUs once its start-up self-test passed on the device (kit/zo/cuda.py
    `checked`: known answers from native; on a failure one line and portable), portable elsewhere.
    A recorded legacy definition needs the `torch` backend on the same device type.
    """
    if requested not in BACKENDS:
        raise UsageError(f"z backend {requested!r} must be one of {', '.join(BACKENDS)} (--model.zo_backend)")
    if recorded is not None and recorded.family != PHILOX:
        wanted = recorded.family.split("/", 1)[1]
        if device.type != wanted:
            raise UsageError(
                f"the run's z is {recorded.describe()}: its values exist only on a {wanted} device, and "
                f"this one is {device.type}; rebuild on {wanted} (--device {wanted})"
            )
        return "torch"
    if recorded is not None and requested == "torch":
        requested = "auto"  # the run's z is philox: any of its backends gives it
    if requested == "cuda" and device.type == "cuda" and torch.version.cuda is not None:
        from kit.zo.cuda import checked

        result = checked(device, fallback=False)
        if not result.passed:
            raise UsageError(
                f"the cuda z kernel failed its self-test on {result.device} ({result.detail}): its z "
                "would not be native's; use --model.zo_backend portable (same z) or auto"
            )
    if requested != "auto":
        return requested
    if device.type == "cpu":
        if _native_available():
            return "native"
        global _notified
        if not _notified:
            print(
                "[kit] no C compiler for the native z kernels: using the portable z backend "
                "(same bits, slower); install gcc for speed",
                file=sys.stderr,
                flush=True,
            )
            _notified = True
        return "portable"
    if device.type == "cuda" and torch.version.cuda is not None:
        from kit.zo.cuda import checked

        return "cuda" if checked(device).passed else "portable"
    return "portable"


def check_same(recorded: ZDefinition, current: ZDefinition, where: str) -> None:
    """Refuse to go on when `where` (a checkpoint, a seed file) was made under another z."""
    if recorded != current:
        raise UsageError(
            f"{where} was made with z = {recorded.describe()}, but this run's z is {current.describe()}: "
            "use the recorded definition (same --model.distribution; --model.zo_backend auto)"
        )
