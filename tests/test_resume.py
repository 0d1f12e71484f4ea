"""Crash-safe resume: a checkpoint after every round, written atomically, refused when damaged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from kit.checkpoint import LAST, RoundCheckpoint, load_checkpoint
from kit.cli import main
from kit.errors import UsageError
from kit.metrics_csv import RoundCSVLogger, read_rows

from .conftest import REPO, fed_args, method_cli

NOT_REPRODUCIBLE = {"time/round_s"}  # wall time


def _args(model_dir: Path, data_root: Path, run: Path, method: str = "fedkseed-pro") -> list[str]:
    extra = ["--fed.rouge_at_end", "false", "--fed.local_steps", "8", "--data.eval_size", "8"]
    own = method_cli(method) if method != "fedkseed-pro" else []  # fed_args' own method: FedKSeed-Pro
    own += ["--fed.num_seeds", "16"] if method == "ferret" else []  # fewer bases to draw: a shorter test
    return fed_args(model_dir, data_root, run, rounds=3) + extra + own


def _rows(run: Path) -> list[dict]:
    rows = read_rows(run / "metrics.csv")
    return [{k: v for k, v in row.items() if k not in NOT_REPRODUCIBLE} for row in rows]


def _rounds_done(ckpt: Path) -> int:
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        return state["callbacks"]["FederatedLoop"]["rounds_done"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def kill_9_inside_round_3(args: list[str], ckpt: Path, log_path: Path) -> None:
    """Run `fedkseed ARGS` in its own process and kill -9 it once round 2's checkpoint is on disk."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FEDKSEED_RUN_DIR", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kit", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 300
            while _rounds_done(ckpt) < 2:  # round 2's checkpoint is on disk: round 3 has begun
                assert proc.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "round 2 did not finish within 300 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


# the methods whose global state is a history replayed from theta_0, and Ferret (a tensor checkpoint)
@pytest.mark.parametrize("method", ["fedkseed-pro", "decomfl", "feedsign", "ferret"])
def test_kill_9_mid_round_then_resume_equals_an_uninterrupted_run(
    method, tiny_model_dir, data_root, tmp_path
):
    killed, full = tmp_path / "killed", tmp_path / "full"
    ckpt = killed / "checkpoints" / LAST
    kill_9_inside_round_3([*_args(tiny_model_dir, data_root, killed, method)], ckpt, tmp_path / "killed.log")
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["rounds"] == 2 and not summary["finished"]  # killed inside round 3, not after it
    assert _rounds_done(ckpt) == 2

    main(_args(tiny_model_dir, data_root, killed, method) + ["--ckpt_path", str(ckpt)])
    main(_args(tiny_model_dir, data_root, full, method))
    a, b = (json.loads((run / "summary.json").read_text()) for run in (full, killed))
    assert b["rounds"] == 3 and b["finished"]
    for key in ("global_weights_sha256", "train_loss_per_round", "eval_loss_per_round", "eval_loss_before",
                "pro_probabilities_sorted", "uplink_bytes_per_client_round", "total_bytes"):  # fmt: skip
        assert a.get(key) == b.get(key), key
    rows = _rows(killed)
    assert [r["round"] for r in rows] == ["0", "1", "2", "3"]  # none lost, none repeated
    assert rows == _rows(full)
    assert _rounds_done(ckpt) == 3


class _Trainer:
    """What RoundCheckpoint uses of a Trainer; `save_checkpoint` can die halfway like a killed process."""

    is_global_zero = True

    def __init__(self, rounds_done: int, die: bool = False) -> None:
        self.rounds_done, self.die = rounds_done, die

    def save_checkpoint(self, path: Path) -> None:
        torch.save({"callbacks": {"FederatedLoop": {"rounds_done": self.rounds_done}}}, path)
        if self.die:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt("killed while writing")


def test_a_crash_while_writing_leaves_the_previous_checkpoint_whole(tmp_path):
    callback = RoundCheckpoint(tmp_path / "checkpoints")
    callback.on_train_epoch_end(_Trainer(1), None)
    with pytest.raises(KeyboardInterrupt):
        callback.on_train_epoch_end(_Trainer(2, die=True), None)
    assert load_checkpoint(callback.last_path)["callbacks"]["FederatedLoop"]["rounds_done"] == 1
    callback.on_train_epoch_end(_Trainer(2), None)
    assert load_checkpoint(callback.last_path)["callbacks"]["FederatedLoop"]["rounds_done"] == 2
    assert sorted(p.name for p in callback.dirpath.iterdir()) == [LAST]


def _good_checkpoint(path: Path) -> bytes:
    torch.save({"callbacks": {"FederatedLoop": {"rounds_done": 4, "g": torch.arange(256.0)}}}, path)
    return path.read_bytes()


def test_missing_truncated_corrupt_or_foreign_checkpoints_are_refused_naming_the_file(tmp_path):
    good = tmp_path / "good.ckpt"
    data = _good_checkpoint(good)
    assert load_checkpoint(good)["callbacks"]["FederatedLoop"]["rounds_done"] == 4
    with pytest.raises(UsageError, match=r"--ckpt_path .*missing\.ckpt: no such file"):
        load_checkpoint(tmp_path / "missing.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(UsageError, match=r"truncated\.ckpt is truncated or corrupt"):
        load_checkpoint(truncated)
    flipped = bytearray(data)
    at = data.find(torch.tensor([100.0]).numpy().tobytes())  # inside the tensor's record
    flipped[at] ^= 0xFF
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(bytes(flipped))
    silently = torch.load(corrupt, weights_only=True)  # torch itself does not notice
    assert silently["callbacks"]["FederatedLoop"]["g"][100] != 100
    with pytest.raises(UsageError, match=r"corrupt\.ckpt is corrupt \(checksum mismatch"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UsageError, match=r"foreign\.ckpt is not a fedkseed checkpoint"):
        load_checkpoint(foreign)
    assert zipfile.is_zipfile(good)


def test_fit_refuses_a_truncated_checkpoint_in_one_line(tiny_model_dir, data_root, tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(_good_checkpoint(ckpt)[:1000])
    with pytest.raises(SystemExit) as exit_info:
        main(_args(tiny_model_dir, data_root, tmp_path / "run") + ["--ckpt_path", str(ckpt)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"fedkseed: error: --ckpt_path {ckpt} is truncated or corrupt")
    assert "Traceback" not in "\n".join(err)


def test_metrics_csv_resume_keeps_the_checkpointed_rounds_only(tmp_path):
    first = RoundCSVLogger(tmp_path)
    for rnd in range(4):
        first.log_metrics({"train/loss": 10.0 - rnd, "round": rnd}, step=rnd)
        first.save()  # each save leaves a whole file
        assert [r["round"] for r in read_rows(tmp_path / "metrics.csv")] == [str(i) for i in range(rnd + 1)]
    resumed = RoundCSVLogger(tmp_path)  # checkpoint of round 2: round 3's row was written after it
    resumed.resume(2)
    resumed.log_metrics({"train/loss": 6.5, "eval/loss": 1.0, "round": 3}, step=3)
    resumed.save()
    rows = list(read_rows(tmp_path / "metrics.csv"))
    assert [(r["round"], r["train/loss"], r["eval/loss"]) for r in rows] == [
        ("0", "10.0", ""), ("1", "9.0", ""), ("2", "8.0", ""), ("3", "6.5", "1.0")
    ]  # fmt: skip
    fresh = RoundCSVLogger(tmp_path)  # a new run in the same directory starts a new file
    fresh.log_metrics({"train/loss": 1.0, "round": 0}, step=0)
    fresh.save()
    assert [r["round"] for r in read_rows(tmp_path / "metrics.csv")] == ["0"]
    assert not list(tmp_path.glob("*.tmp"))
