"""Every run records z's definition and theta_0's identity; rebuild and resume use them and refuse
another theta_0 or another z with an error naming both; the rebuilt weights' digest is checked with
`--ckpt` too (the checkpoint holds the digest of each round)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml

from kit.cli import main
from kit.identity import weights_digest
from kit.loop import FederatedLoop
from kit.models import load_model
from kit.rebuild import load_run_model

from .conftest import fed_args

LOOP = FederatedLoop.__qualname__
QUIET = ["--fed.rouge_at_end", "false"]


@pytest.fixture(scope="module")
def run(tiny_model_dir, data_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("zrec") / "run"
    main([*fed_args(tiny_model_dir, data_root, run_dir, rounds=2), *QUIET])
    return run_dir


def _loop_state(ckpt) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"][LOOP]


def _edited_checkpoint(run_dir, tmp_path, edit) -> str:
    full = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    edit(full["callbacks"][LOOP])
    path = tmp_path / "edited.ckpt"
    torch.save(full, path)
    return str(path)


def test_run_records_z_theta0_and_every_rounds_digest(run, tiny_model_dir):
    summary = json.loads((run / "summary.json").read_text())
    state = _loop_state(run / "checkpoints" / "last.ckpt")
    z = {"family": "philox", "version": "2", "chunk_size": 1 << 20, "distribution": "gaussian"}
    z["backend"] = "native"  # recorded, not part of the definition (no cuda self-test on a CPU)
    theta0 = {"model": str(tiny_model_dir), "sha256": weights_digest(load_model(str(tiny_model_dir)))}
    assert summary["z"] == state["z"] == z
    assert summary["theta0"] == state["theta0"] == theta0
    assert len(state["round_digests"]) == 2 and state["round_digests"][-1] == summary["global_weights_sha256"]
    assert state["round_digests"][0] != state["round_digests"][1] != theta0["sha256"]


def test_rebuild_from_a_moved_checkpoint_checks_its_rounds_digest(run, tmp_path):
    moved = tmp_path / "kept.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", moved)
    model, _ = load_run_model(run, moved)
    assert weights_digest(model) == json.loads((run / "summary.json").read_text())["global_weights_sha256"]

    def corrupt_history(state):  # one round's scalar changed: the replay gives other weights
        g = state["method_state"]["downlinks"][1]
        g[int(torch.nonzero(g)[0])] *= 1.5

    with pytest.raises(RuntimeError, match="rebuilt from checkpoint .* have sha256"):
        load_run_model(run, _edited_checkpoint(run, tmp_path, corrupt_history))


def test_rebuild_refuses_another_theta0_naming_both(run, tmp_path, tiny_model_dir):
    other = tmp_path / "other-model"
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    model.save_pretrained(other)
    shutil.copytree(run, tmp_path / "run")
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    config["model"]["model"] = str(other)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=f"θ₀ = {tiny_model_dir}.*loaded here is {other}"):
        load_run_model(tmp_path / "run")


def test_rebuild_refuses_another_z_naming_both(run, tmp_path):
    def rademacher(state):
        state["z"] = {**state["z"], "distribution": "rademacher"}

    with pytest.raises(
        ValueError, match="made with z = philox v2, rademacher.*this run's z is philox v2, gauss"
    ):
        load_run_model(run, _edited_checkpoint(run, tmp_path, rademacher))

    def legacy_cuda(state):
        state["z"] = {**state["z"], "family": "torch.Generator/cuda"}

    with pytest.raises(ValueError, match="only on a cuda device"):
        load_run_model(run, _edited_checkpoint(run, tmp_path, legacy_cuda))


def test_resume_refuses_another_theta0(tmp_path, data_root, tiny_model_dir, capsys):
    """The CLI resumes with the checkpoint's own hyperparameters, so another θ₀ is the same model id
    whose weights changed (a re-converted folder, a moved Hub revision)."""
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    args = [*fed_args(base, data_root, tmp_path / "run", rounds=1), *QUIET]
    main(args)
    model = load_model(str(base))
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    model.save_pretrained(base)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # a fixable problem: one line, exit status 2
        main([*fed_args(base, data_root, tmp_path / "run", rounds=2), *QUIET, "--ckpt_path", str(ckpt)])
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    where = re.escape(str(base))
    assert re.search(f"θ₀ = {where} .*but the model loaded here is {where} ", line)
