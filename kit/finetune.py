"""A FedKSeed fine-tune shared as a seed file, and turned back into weights.

    from kit.finetune import export_run, materialize
    export_run("runs/quickstart", "quickstart.seeds")          # a few KB
    materialize("quickstart.seeds", "models/quickstart")       # a Hugging Face model folder

`materialize` loads the base model, checks it is the run's θ₀, replays every round's scalars with
the server's own update (`kit.federation.sync.apply_scalars`) under the recorded z and master dtype
(float16 / bfloat16 weights move by the reference's arithmetic, kit/zo/master.py), checks the
result against the run's weights digest and saves it with `save_pretrained` and the tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path

from kit.errors import UsageError
from kit.federation.seedfile import SeedFile, decode, encode
from kit.federation.seeds import SeedPool
from kit.federation.sync import apply_scalars
from kit.identity import check_rebuilt, check_theta0, theta0_identity
from kit.methods import SCALAR_PAYLOAD
from kit.models import load_model, load_tokenizer
from kit.zo.definition import ZDefinition, check_same
from kit.zo.perturb import Perturber

ZO_SEED_METHODS = SCALAR_PAYLOAD  # the registry's methods whose runs are seed files


def export_run(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write `run_dir`'s fine-tune (its checkpoint's rounds) as a seed file at `out`; returns `out`."""
    from kit.rebuild import read_run  # Lightning-side reader of run directories

    hp, settings, state, ckpt_path = read_run(run_dir, checkpoint)
    if hp["method"] not in ZO_SEED_METHODS:
        raise UsageError(
            f"{run_dir} is a {hp['method']!r} run; only {' and '.join(ZO_SEED_METHODS)} runs "
            "export as seed files"
        )
    digests = state.get("round_digests") or []
    if not state.get("theta0") or not state.get("z") or len(digests) != state["rounds_done"]:
        raise UsageError(
            f"{ckpt_path} records no θ₀, z or round digests (made by an older kit): re-run it to export it"
        )
    sf = SeedFile(
        model=state["theta0"]["model"],
        theta0_sha256=state["theta0"]["sha256"],
        z=state["z"],
        num_seeds=settings.num_seeds,
        federation_seed=settings.seed,
        lr=float(hp["lr"]),
        weight_decay=float(hp["weight_decay"]),
        local_steps=settings.local_steps,
        method=hp["method"],
        global_weights_sha256=digests[-1] if digests else state["theta0"]["sha256"],
        master_dtype=state.get("master_dtype") or "float32",
        downlinks=[g.numpy() for g in state["method_state"]["downlinks"]],
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(encode(sf))
    os.replace(tmp, out)  # atomic: never a half-written seed file
    return out


def materialize(
    seed_file: str | Path, out_dir: str | Path, model: str | None = None, device: str = "cpu"
) -> str:
    """Rebuild the fine-tune of `seed_file` on its base model (or `model`, the same weights elsewhere)
    and save it to `out_dir`; returns the verified weights digest."""
    sf = decode(Path(seed_file).read_bytes(), str(seed_file))
    base = model or sf.model
    net = load_model(base, dtype=sf.master_dtype, device=device)  # the recorded master dtype
    check_theta0({"model": sf.model, "sha256": sf.theta0_sha256}, theta0_identity(base, net), str(seed_file))
    zdef = ZDefinition.from_dict(sf.z)
    perturber = Perturber(
        list(net.parameters()), zdef.distribution, chunk_size=zdef.chunk_size, recorded=zdef
    )
    try:
        check_same(zdef, perturber.definition, str(seed_file))
        pool = SeedPool(sf.num_seeds, sf.federation_seed)
        decay = sf.round_decay()  # the server's global update decays matrices as tau local steps do
        for g in sf.downlinks:
            apply_scalars(perturber, pool, g, sf.lr, decay)
    finally:
        perturber.close()
    check_rebuilt(sf.global_weights_sha256, net, str(seed_file))
    out_dir = Path(out_dir)
    net.save_pretrained(out_dir)
    load_tokenizer(base).save_pretrained(out_dir)
    return sf.global_weights_sha256
