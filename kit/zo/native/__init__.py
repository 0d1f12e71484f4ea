"""Native CPU kernels for z (`Perturber(..., backend="native")`), built from zkernel.c on first use.

    from kit.zo.native import load
    zk = load()                                   # compiles once into the kit's cache, then loads
    zk.fill(t.data_ptr(), t.numel(), key)          # t[i] = z[i]  (float32, contiguous)
    zk.axpy(p.data_ptr(), p.numel(), key, alpha)   # p[i] = keep * p[i] + alpha * z[i], z never stored

The C source defines z exactly (Philox-4x32-10 counters + float32 Box-Muller, see its header) and is
compiled with the system C compiler (`$CC`, else `cc`, `gcc` or `clang`) using the flags on its first
line (no -march=native, no fast-math, FMA contraction off), into
`cache_dir()/native/zkernel-<sha256(source)[:12]>.so`: a temp file renamed into place, so concurrent
processes never load a half-written library. The kernels are called through ctypes, which releases
the GIL, so a thread pool runs them in parallel.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from kit.paths import cache_dir

SOURCE = Path(__file__).with_name("zkernel.c")
VERSION = 2  # must match ZK_VERSION in zkernel.c
DISTRIBUTIONS = {"gaussian": "gauss", "rademacher": "rade"}
FIX = "install gcc or use --model.zo_backend portable (same z, slower)"


class NativeUnavailable(RuntimeError):
    """The native backend cannot be built or loaded here (no C compiler, unsupported platform)."""


def source_bytes() -> bytes:
    return SOURCE.read_bytes()


def cflags(source: bytes | None = None) -> list[str]:
    """The compiler flags written on the first line of zkernel.c (`/* zk-cflags: ... */`)."""
    first = (source if source is not None else source_bytes()).decode().splitlines()[0]
    marker = "zk-cflags:"
    if marker not in first:
        raise NativeUnavailable(f"{SOURCE} has no '{marker}' first line")
    return shlex.split(first.split(marker, 1)[1])


def find_compiler() -> list[str] | None:
    """The compiler command: `$CC` if set and found, else the first of cc, gcc, clang on PATH."""
    candidates = [shlex.split(os.environ["CC"])] if os.environ.get("CC", "").strip() else []
    candidates += [["cc"], ["gcc"], ["clang"]]
    for cmd in candidates:
        found = shutil.which(cmd[0])
        if found:
            return [found, *cmd[1:]]
    return None


def library_path(source: bytes | None = None) -> Path:
    digest = hashlib.sha256(source if source is not None else source_bytes()).hexdigest()[:12]
    return cache_dir() / "native" / f"zkernel-{digest}.so"


def build(dest: Path | None = None, extra_flags: Sequence[str] = (), force: bool = False) -> Path:
    """Compile zkernel.c into `dest` (default: `library_path()`) unless it is already there.

    `extra_flags` (e.g. `["-O0"]` or `["-DZK_PORTABLE"]`) go after the source's own flags; the tests
    use them to build other, independently vectorised variants and compare their bits.
    """
    source = source_bytes()
    dest = Path(dest) if dest is not None else library_path(source)
    if dest.is_file() and not force:
        return dest
    cc = find_compiler()
    if cc is None:
        raise NativeUnavailable(f"the native z backend needs a C compiler and none was found: {FIX}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise NativeUnavailable(
            f"cannot write the native z kernels to {dest.parent} ({exc}): point $FEDKSEED_CACHE at a "
            "writable folder or use --model.zo_backend portable"
        ) from exc
    os.close(fd)
    cmd = [*cc, *cflags(source), *extra_flags, str(SOURCE), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NativeUnavailable(
                f"building the native z kernels failed ({shlex.join(cmd)}):\n{proc.stderr[-2000:]}\n{FIX}"
            )
        os.chmod(tmp, 0o755)  # mkstemp made it private; the cache may be shared
        os.replace(tmp, dest)  # atomic: a concurrent process sees the old file, the new one, or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


_F = ctypes.c_float
_I64 = ctypes.c_int64
_U64 = ctypes.c_uint64
_P = ctypes.c_void_p


class ZKernel:
    """The kernels of one built library, for one instruction-set variant (`isa`).

    All pointers are raw addresses of contiguous float32 memory (`tensor.data_ptr()`, numpy's
    `a.ctypes.data`); `n` is the number of elements, `key` a 64-bit chunk key (`mix(seed, i, c)`).
    Every variant gives the same bits; `isa=None` takes the fastest this CPU runs.
    """

    def __init__(self, path: Path, isa: str | None = None) -> None:
        self.path = Path(path)
        self.lib = lib = ctypes.CDLL(str(self.path))
        lib.zk_version.restype = ctypes.c_int
        if lib.zk_version() != VERSION:
            raise NativeUnavailable(f"{self.path} is version {lib.zk_version()}, expected {VERSION}")
        lib.zk_isas.restype = ctypes.c_char_p
        self.available: list[str] = lib.zk_isas().decode().split(",")
        isa = isa or self.available[0]
        if isa not in self.available:
            raise NativeUnavailable(
                f"instruction set {isa!r} is not in {self.available} (this CPU and build)"
            )
        self.isa = isa
        self._fill, self._axpy, self._axpy_fill = {}, {}, {}
        for dist, tag in DISTRIBUTIONS.items():
            f = getattr(lib, f"zk_{tag}_fill_{isa}")
            f.argtypes, f.restype = [_P, _I64, _U64], None
            a = getattr(lib, f"zk_{tag}_axpy_{isa}")
            a.argtypes, a.restype = [_P, _I64, _U64, _F, _F], None
            af = getattr(lib, f"zk_{tag}_axpy_fill_{isa}")
            af.argtypes, af.restype = [_P, _P, _I64, _U64, _F, _F], None
            self._fill[dist], self._axpy[dist], self._axpy_fill[dist] = f, a, af
        self._axpy_z = getattr(lib, f"zk_axpy_z_{isa}")
        self._axpy_z.argtypes, self._axpy_z.restype = [_P, _P, _I64, _F, _F], None
        lib.zk_philox4x32.argtypes = [ctypes.POINTER(ctypes.c_uint32)] * 3
        lib.zk_philox4x32.restype = None
        self._half = {}  # float16 / bfloat16 master weights: (perturb, update) per format
        lib.zk_has_f16c.restype = ctypes.c_int
        self.f16c = isa == "avx2" and bool(lib.zk_has_f16c())  # float16 in 8 lanes (same bits)
        for fmt in ("f16", "bf16"):
            variant = "avx2" if fmt == "f16" and self.f16c else "c"
            pz, uz = (
                getattr(lib, f"zk_{fmt}_perturb_z_{variant}"),
                getattr(lib, f"zk_{fmt}_update_z_{variant}"),
            )
            pz.argtypes, pz.restype = [_P, _P, _I64, _F], None
            uz.argtypes, uz.restype = [_P, _P, _I64, _F, _F, _F], None
            self._half[fmt] = (pz, uz)

    def fill(self, out: int, n: int, key: int, distribution: str = "gaussian") -> None:
        """out[i] = z[i] for i < n."""
        self._fill[distribution](out, n, key)

    def axpy(self, p: int, n: int, key: int, alpha: float, keep: float = 1.0, distribution: str = "gaussian"):
        """p[i] = keep * p[i] + alpha * z[i] (float32, each product and the sum rounded once)."""
        self._axpy[distribution](p, n, key, alpha, keep)

    def axpy_fill(
        self, p: int, z: int, n: int, key: int, alpha: float, keep: float = 1.0, distribution="gaussian"
    ):
        """z[i] = z(key)[i] and p[i] = keep * p[i] + alpha * z[i], in one pass."""
        self._axpy_fill[distribution](p, z, n, key, alpha, keep)

    def axpy_z(self, p: int, z: int, n: int, alpha: float, keep: float = 1.0) -> None:
        """p[i] = keep * p[i] + alpha * z[i] with a stored z: the same bits as `axpy`."""
        self._axpy_z(p, z, n, alpha, keep)

    def half_perturb(self, p: int, z: int, n: int, fmt: str, scale: float) -> None:
        """16-bit weights p (fmt "f16" or "bf16"): p = p + scale * zq, zq = the float32 z rounded to
        fmt, each op rounded to fmt (the reference's out-of-place perturbation, kit/zo/master.py)."""
        self._half[fmt][0](p, z, n, scale)

    def half_update(self, p: int, z: int, n: int, fmt: str, restore: float, lr: float, grad: float) -> None:
        """16-bit weights: p = p + restore * zq (when restore != 0), then p = p - lr * (grad * zq)."""
        self._half[fmt][1](p, z, n, restore, lr, grad)

    def philox4x32(self, ctr: Sequence[int], key: Sequence[int]) -> list[int]:
        """The raw Philox-4x32-10 block of one counter (known-answer tests)."""
        c = (ctypes.c_uint32 * 4)(*ctr)
        k = (ctypes.c_uint32 * 2)(*key)
        out = (ctypes.c_uint32 * 4)()
        self.lib.zk_philox4x32(c, k, out)
        return list(out)


_lock = threading.Lock()
_loaded: dict[str | None, ZKernel] = {}


def load(isa: str | None = None) -> ZKernel:
    """The kernels, built on first use (once per source version and machine) and loaded once per process.

    Raises NativeUnavailable (with the fix) when no compiler is found or the build fails.
    """
    with _lock:
        if isa not in _loaded:
            _loaded[isa] = ZKernel(build(), isa)
        return _loaded[isa]


def available() -> bool:
    """Whether `load()` works here (compiles on first call)."""
    try:
        load()
    except (NativeUnavailable, OSError):
        return False
    return True
