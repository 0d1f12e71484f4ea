"""float16 / bfloat16 master weights (`--model.master_dtype`): the reference's out-of-place arithmetic,
checked against a numpy re-statement of it, and a float16 run's global model identical on the
server, in a client's replay, after resume and after export + materialize."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from kit.cli import main
from kit.errors import UsageError
from kit.federation.messages import Downlink
from kit.federation.seedfile import MAGIC, SeedFileError, decode, encode
from kit.federation.seeds import SeedPool
from kit.federation.sync import apply_scalars, replay
from kit.identity import weights_digest
from kit.models import load_model
from kit.module import FedKSeedModule
from kit.rebuild import load_run_model, read_run
from kit.zo.estimator import zo_step
from kit.zo.master import hp_master_dtype
from kit.zo.perturb import Perturber

from .conftest import fed_args

QUIET = ["--fed.rouge_at_end", "false"]
F16 = ["--model.master_dtype", "float16"]


# -- the reference's arithmetic, restated in numpy ------------------------------------------------
# zhenqincn/FedKSeed optimizers/mezo_optimizer.py moves a float16 weight out of place:
#   perturbation  param = param + (scaling_factor * zo_eps) * z
#   update        param = param - lr * (projected_grad * z)
# where torch evaluates each op on float16 tensors in float32, the Python scalar rounded to float32,
# and rounds the result to float16 (bfloat16 alike). Written here with numpy's float32 arithmetic
# and an explicit round-to-nearest-even to the 16-bit format.


def _round16(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to nearest even in `dtype`, returned as float32."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    bits = x.view(np.uint32).astype(np.uint64)  # bfloat16: the top 16 bits, rounded to nearest even
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def _ref_perturb(p, z, scale, dtype):
    return _round16(p + _round16(z * np.float32(scale), dtype), dtype)


def _ref_update(p, z, lr, grad, dtype):
    step = _round16(np.float32(lr) * _round16(z * np.float32(grad), dtype), dtype)
    return _round16(p - step, dtype)


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 48), (48,), (3000,)]
    return [(torch.randn(s, generator=g) * 0.02).to(dtype) for s in shapes]


def _np(params: list[torch.Tensor]) -> list[np.ndarray]:
    return [p.float().numpy().copy() for p in params]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("backend", ["native", "portable"])
def test_update_is_the_references_out_of_place_arithmetic(dtype, backend):
    params = _params(getattr(torch, dtype))
    perturber = Perturber(params, backend=backend, chunk_size=1024)
    before = _np(params)
    zq = [_round16(z.numpy(), dtype) for z in perturber.z(77)]  # the kit's float32 z, rounded
    lr, grad = 2e-5, -3.7
    perturber.update(77, lr, grad)
    want = [_ref_update(p, z, lr, grad, dtype) for p, z in zip(before, zq, strict=True)]
    for got, expected in zip(_np(params), want, strict=True):
        assert np.array_equal(got, expected)
    perturber.add(77, 1e-3)  # a perturbation pass
    want = [_ref_perturb(p, z, 1e-3, dtype) for p, z in zip(want, zq, strict=True)]
    for got, expected in zip(_np(params), want, strict=True):
        assert np.array_equal(got, expected)
    perturber.close()


def test_an_update_below_the_float16_spacing_leaves_the_weight_unchanged():
    # weights 1.0 (float16 spacing 2^-10 ~ 9.8e-4) and 0.02 (spacing 2^-16 ~ 1.5e-5), paper lr 3e-7,
    # g = 5: |lr g z| <= 1.5e-6 |z| < 7.6e-6 (half the spacing of 0.02) for |z| < 5 -> no change,
    # where float32 moves every one of them
    p16 = torch.tensor([1.0, 0.02, -0.02, 1e-5] * 256, dtype=torch.float16)
    p32 = p16.float().clone()
    z16, z32 = Perturber([p16], backend="native"), Perturber([p32], backend="native")
    z = z16.z(5)[0].numpy()
    lr, grad = 3e-7, 5.0
    z16.update(5, lr, grad)
    z32.update(5, lr, grad)
    start = np.tile(np.array([1.0, 0.02, -0.02, 1e-5], dtype=np.float16).astype(np.float32), 256)
    expected = _ref_update(start, _round16(z, "float16"), lr, grad, "float16")
    assert np.array_equal(p16.float().numpy(), expected)
    big = np.abs(start) >= 0.01
    assert np.array_equal(p16.float().numpy()[big], start[big])  # every update lost at |w| >= 0.01
    assert (p32.numpy()[big] != start[big]).mean() > 0.99  # float32 keeps them
    small = ~big  # at |w| = 1e-5 (spacing 2^-24 ... 2^-27) the same updates survive, rounded
    assert (p16.float().numpy()[small] != start[small]).mean() > 0.9


def test_a_float16_step_drifts_as_the_references_plus_minus_plus_passes():
    params = _params(torch.float16, seed=3)
    perturber = Perturber(params, backend="native")
    start = _np(params)
    zq = [_round16(z.numpy(), "float16") for z in perturber.z(11)]
    losses = iter([2.0, 1.5])
    eps, lr = 1e-3, 1e-4
    out = zo_step(perturber, lambda: torch.tensor(next(losses)), 0, 11, eps=eps, lr=lr)
    assert out.projected_grad == pytest.approx(0.5 / (2 * eps))
    want = []
    for p, z in zip(start, zq, strict=True):
        for scale in (eps, -2.0 * eps, eps):  # three separate passes: the restore is not exact
            p = _ref_perturb(p, z, scale, "float16")
        want.append(_ref_update(p, z, lr, out.projected_grad, "float16"))
    for got, expected in zip(_np(params), want, strict=True):
        assert np.array_equal(got, expected)
    # the drift: with g = 0 the reference's passes still move some weights
    params = _params(torch.float16, seed=3)
    perturber = Perturber(params, backend="native")
    out = zo_step(perturber, lambda: torch.tensor(float("nan")), 0, 11, eps=eps, lr=lr)
    assert out.skipped
    drifted = []
    for p, z in zip(start, zq, strict=True):
        for scale in (eps, -2.0 * eps, eps):
            p = _ref_perturb(p, z, scale, "float16")
        drifted.append(p)
    assert all(np.array_equal(a, b) for a, b in zip(_np(params), drifted, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(drifted, start, strict=True))


def test_float32_weights_keep_the_fused_update():
    params = _params(torch.float32)
    twin = [p.clone() for p in params]
    a, b = Perturber(params, backend="native"), Perturber(twin, backend="native")
    a.update(9, 3e-4, 2.5, restore=1e-3)
    b.add(9, -3e-4 * 2.5, restore=1e-3)
    assert all(torch.equal(x, y) for x, y in zip(params, twin, strict=True))


def test_master_dtype_settings():
    with pytest.raises(UsageError, match="weight_decay 0"):
        FedKSeedModule(master_dtype="float16", weight_decay=0.01)
    # a paper recipe (master_dtype float16) composed with a baseline's method recipe: float32 weights
    module = FedKSeedModule(method="fedit", master_dtype="float16", weight_decay=0.01)
    assert hp_master_dtype(module.hparams) == "float32"
    assert (
        hp_master_dtype(FedKSeedModule(method="fedkseed-pro", master_dtype="bfloat16").hparams) == "bfloat16"
    )


# -- the seed file's header field -----------------------------------------------------------------
def _header_file(header: dict) -> bytes:
    import hashlib
    import struct

    raw = json.dumps(header, sort_keys=True).encode()
    body = MAGIC + struct.pack("<HI", 1, len(raw)) + raw
    return body + hashlib.sha256(body).digest()


def _header(**extra) -> dict:
    z = {"family": "philox", "version": "2", "chunk_size": 1 << 20, "distribution": "gaussian"}
    base = dict(model="m", theta0_sha256="a" * 64, z=z, num_seeds=4, federation_seed=1, lr=1e-3)
    rest = {"weight_decay": 0.0, "method": "fedkseed", "rounds": 0, "global_weights_sha256": "b" * 64}
    return {**base, **rest, **extra}


def test_seed_file_records_the_master_dtype_and_old_files_read_as_float32():
    assert decode(_header_file(_header())).master_dtype == "float32"  # written before the field
    sf = decode(_header_file(_header(master_dtype="float16")))
    assert sf.master_dtype == "float16" and decode(encode(sf)).master_dtype == "float16"
    with pytest.raises(SeedFileError, match="master_dtype must be one of .*'float8'"):
        decode(_header_file(_header(master_dtype="float8")))


# -- a float16 run: server, replay, resume, materialize ---------------------------------------------
@pytest.fixture(scope="module")
def runs(tiny_model_dir, data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("master16")
    full = root / "full"
    main([*fed_args(tiny_model_dir, data_root, full, rounds=2), *QUIET, *F16])
    part = root / "resumed"
    main([*fed_args(tiny_model_dir, data_root, part, rounds=1), *QUIET, *F16])
    ckpt = part / "checkpoints" / "last.ckpt"
    main([*fed_args(tiny_model_dir, data_root, part, rounds=2), *QUIET, *F16, "--ckpt_path", str(ckpt)])
    f32 = root / "f32"
    main([*fed_args(tiny_model_dir, data_root, f32, rounds=2), *QUIET])
    return full, part, f32


def _summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_float16_run_is_recorded_and_differs_from_float32(runs):
    full, _, f32 = runs
    s16, s32 = _summary(full), _summary(f32)
    assert s16["master_dtype"] == "float16" and s32["master_dtype"] == "float32"
    state = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["callbacks"]["FederatedLoop"]["master_dtype"] == "float16"
    assert s16["global_weights_sha256"] != s32["global_weights_sha256"]
    assert all(math.isfinite(x) for x in s16["eval_loss_per_round"])


def test_float16_global_model_is_identical_on_server_replay_resume_and_materialize(
    runs, tiny_model_dir, tmp_path
):
    full, resumed, _ = runs
    server = _summary(full)["global_weights_sha256"]
    assert _summary(resumed)["global_weights_sha256"] == server  # resume
    model, _ = load_run_model(full)  # rebuild (eval --run): the recorded master dtype, digest-checked
    assert model.dtype == torch.float16 and weights_digest(model) == server
    # a client's replay: theta_0 in float16 caught up through every round's downlink
    hp, settings, state, _ = read_run(full)
    g = [t.numpy() for t in state["method_state"]["downlinks"]]
    net = load_model(str(tiny_model_dir), dtype="float16")
    perturber = Perturber(list(net.parameters()))
    pool = SeedPool(settings.num_seeds, settings.seed)
    replay(perturber, pool, [Downlink(r + 1, s) for r, s in enumerate(g)], hp["lr"])
    assert weights_digest(net) == server
    # the same history on float32 weights is another model
    net32 = load_model(str(tiny_model_dir))
    for s in g:
        apply_scalars(Perturber(list(net32.parameters())), pool, s, hp["lr"])
    assert weights_digest(net32) != server
    # export + materialize
    seeds, out = tmp_path / "run.seeds", tmp_path / "materialized"
    main(["export", "--run", str(full), "--out", str(seeds)])
    assert decode(seeds.read_bytes()).master_dtype == "float16"
    main(["materialize", str(seeds), "--out", str(out)])
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16)
    assert weights_digest(loaded) == server


def test_resume_and_rebuild_refuse_another_master_dtype(runs, tiny_model_dir, data_root, tmp_path, capsys):
    full, _, _ = runs
    whole = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    whole["callbacks"]["FederatedLoop"]["master_dtype"] = "bfloat16"  # weights load as float16 (hparams)
    edited = tmp_path / "edited.ckpt"
    torch.save(whole, edited)
    with pytest.raises(UsageError, match="bfloat16 master weights, but the weights here are float16"):
        load_run_model(full, edited)
    args = [*fed_args(tiny_model_dir, data_root, tmp_path / "r", rounds=3), *QUIET, *F16]
    with pytest.raises(SystemExit):
        main([*args, "--ckpt_path", str(edited)])
    assert "bfloat16 master weights" in capsys.readouterr().err


FORMATS = ((torch.float16, "f16"), (torch.bfloat16, "bf16"))


def test_native_16_bit_kernels_round_edge_values_as_torch_does():
    # subnormals, ties, the float16 overflow threshold (65520 -> inf), zeros, signs; torch's own casts
    # and ops are the statement (the kernels' rounding is integer code of their own)
    from kit.zo.native import load

    rng = np.random.default_rng(1)
    specials = [0.0, -0.0, 1e-8, 2.9802322e-08, 3e-8, 5.96e-8, 6.1e-5, 6.097e-5, 65504.0, 65519.0, 65520.0]
    specials += [-65520.0, 1e30, -1e-30, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 2**-14 * (1 + 2**-11)]
    z = np.concatenate([np.array(specials, dtype=np.float32), rng.standard_normal(4000).astype(np.float32)])
    z = np.concatenate([z, (rng.standard_normal(4000) * 1e-6).astype(np.float32)])
    cases = [(isa, dtype, fmt) for isa in load().available for dtype, fmt in FORMATS]  # avx2: F16C lanes
    for isa, dtype, fmt in cases:
        kernel = load(isa)
        p0 = torch.from_numpy(rng.standard_normal(z.size).astype(np.float32) * 0.02).to(dtype)
        p0[: len(specials)] = torch.tensor(specials).to(dtype)
        zt = torch.from_numpy(z)
        for scale in (1e-3, -2e-3, 7.0, 3e-7):
            p = p0.clone()
            kernel.half_perturb(p.data_ptr(), zt.data_ptr(), z.size, fmt, scale)
            want = p0 + scale * zt.to(dtype)
            assert torch.equal(p.view(torch.int16), want.view(torch.int16)), (isa, fmt, scale)
        p = p0.clone()
        kernel.half_update(p.data_ptr(), zt.data_ptr(), z.size, fmt, 1e-3, 2e-5, -9.0)
        zq = zt.to(dtype)
        want = p0 + 1e-3 * zq
        want = want - 2e-5 * (-9.0 * zq)
        assert torch.equal(p.view(torch.int16), want.view(torch.int16)), (isa, fmt)
