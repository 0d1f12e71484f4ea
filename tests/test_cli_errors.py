"""Every subcommand fails in one line: each fixable problem, run through the real CLI in a
subprocess, exits with status 2 and prints exactly one line on stderr that names the field, the
file or the flag at fault (no traceback, no usage dump)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kit.cli import main

from .conftest import REPO, fed_args


@pytest.fixture(scope="module")
def env(tiny_model_dir, data_root, tmp_path_factory) -> dict:
    """A finished one-round FedKSeed-Pro run, its seed file, and broken copies of both."""
    base = tmp_path_factory.mktemp("cli-errors")
    run = base / "run"
    main(fed_args(tiny_model_dir, data_root, run, rounds=1) + ["--fed.rouge_at_end", "false"])
    broken = base / "broken-run"
    shutil.copytree(run, broken)
    ckpt = broken / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    seeds = base / "run.seeds"
    main(["export", "--run", str(run), "--out", str(seeds)])
    bad_seeds = base / "bad.seeds"
    bad_seeds.write_bytes(seeds.read_bytes()[:-5])
    dolly = base / "data" / "dolly"
    dolly.mkdir(parents=True)
    lines = (data_root / "dolly" / "databricks-dolly-15k.jsonl").read_text().splitlines()[:5]
    (dolly / "databricks-dolly-15k.jsonl").write_text(
        "\n".join([*lines, '{"instruction": "x",', *lines]) + "\n"
    )
    not_a_dir = base / "a-file"
    not_a_dir.write_text("")
    return {
        "run": run,
        "broken": broken,
        "seeds": seeds,
        "bad_seeds": bad_seeds,
        "bad_data": base / "data",
        "not_a_dir": not_a_dir,
        "model": tiny_model_dir,
        "data": data_root,
        "base": base,
    }


def _fit(e: dict, *extra: str, run: Path | None = None) -> list[str]:
    return fed_args(e["model"], e["data"], run or e["base"] / "fresh", rounds=1) + list(extra)


def _resume(e: dict, *extra: str) -> list[str]:
    ckpt = str(e["run"] / "checkpoints" / "last.ckpt")
    return fed_args(e["model"], e["data"], e["run"], rounds=2) + ["--ckpt_path", ckpt, *extra]


# name -> (argv from the fixture, what the one line must name)
CASES = {
    "fraction": (lambda e: _fit(e, "--fed.fraction", "2"), "--fed.fraction 2.0"),
    "negative_lr": (lambda e: _fit(e, "--model.lr", "-1"), "--model.lr -1.0"),
    "zero_seeds": (lambda e: _fit(e, "--fed.num_seeds", "0"), "--fed.num_seeds 0"),
    "unknown_flag": (lambda e: _fit(e, "--fed.bogus", "1"), "--fed.bogus"),
    "unknown_choice": (lambda e: _fit(e, "--method", "fedmagic"), "fedmagic"),
    "resume_other_k": (lambda e: _resume(e, "--fed.num_seeds", "32"), "fed.num_seeds 64 -> 32"),
    "resume_other_method": (
        lambda e: _resume(e, "--method", "fedkseed"),
        "method 'fedkseed-pro' -> 'fedkseed'",
    ),
    "resume_other_lr": (lambda e: _resume(e, "--model.lr", "5e-3"), "model.lr 0.001 -> 0.005"),
    "unwritable_run_dir": (lambda e: _fit(e, run=e["not_a_dir"] / "run"), "a-file"),
    "malformed_dolly": (
        lambda e: _fit(e, "--data.dataset", "dolly", "--data.data_root", str(e["bad_data"])),
        "databricks-dolly-15k.jsonl line 6",
    ),
    "eval_corrupt_ckpt": (lambda e: ["eval", "--run", str(e["broken"]), "--suite", "ni"], "last.ckpt"),
    "eval_unknown_flag": (lambda e: ["eval", "--bogus"], "--bogus"),
    "export_corrupt_ckpt": (lambda e: ["export", "--run", str(e["broken"]), "--out", "x.seeds"], "last.ckpt"),
    "export_not_a_run": (lambda e: ["export", "--run", str(e["base"]), "--out", "x.seeds"], "config.yaml"),
    "materialize_corrupt": (
        lambda e: ["materialize", str(e["bad_seeds"]), "--out", str(e["base"] / "m")],
        "bad.seeds is truncated or corrupted",
    ),
    "materialize_missing": (lambda e: ["materialize", "nope.seeds", "--out", "m"], "nope.seeds"),
    "materialize_no_out": (lambda e: ["materialize", str(e["seeds"])], "--out"),
    "compare_missing_grid": (lambda e: ["compare", "-c", "nope.yaml", "--out", "x"], "nope.yaml not found"),
    "compare_unknown_flag": (lambda e: ["compare", "-c", "g.yaml", "--out", "x", "--bogus"], "--bogus"),
}


AFTER_START = {"malformed_dolly"}  # found when the data is read, after Lightning's start-up lines


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_fixable_problem_is_one_line_and_exit_2(case, env, tmp_path):
    argv, named = CASES[case]
    environ = {**os.environ, "PYTHONPATH": str(REPO), "FEDKSEED_DATA_ROOT": str(env["data"])}
    proc = subprocess.run(
        [sys.executable, "-m", "kit", *argv(env)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr
    if case in AFTER_START:  # only the run's own start-up lines come before the error
        lines = [line for line in lines if ": error: " in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("fedkseed") and ": error: " in lines[0]
    assert named in lines[0] and proc.stderr.rstrip().endswith(lines[0])


def test_a_bug_still_prints_its_traceback(monkeypatch, capsys):
    from kit import cli_errors

    def buggy():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli_errors.run_guarded("fedkseed", buggy)
    with pytest.raises(SystemExit) as exit_:
        cli_errors.run_guarded(
            "fedkseed x", lambda: (_ for _ in ()).throw(PermissionError(13, "denied", "/r"))
        )
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "fedkseed x: error: cannot write /r: denied; choose a writable location (--run_dir / --out) "
        "or fix its permissions\n"
    )
