"""Resume cannot silently change the experiment: changed settings are refused naming each key and
both values; harmless ones pass; `--resume_changes true` continues deliberately, recorded in
summary.json; what the global model is rebuilt from cannot change at all."""

from __future__ import annotations

import json
import sys

import pytest

from kit.cli import main
from kit.errors import UsageError
from kit.resume_guard import HARMLESS, check_resume, compare_configs, experiment_config, flatten

from .conftest import fed_args


def test_compare_configs_names_each_differing_key_and_skips_harmless_ones():
    recorded = experiment_config(
        {
            "method": "fedkseed",
            "model": {"lr": 0.001},
            "fed": {"fraction": 0.1, "progress": True},
            "trainer": {},
        }
    )
    assert recorded == {"method": "fedkseed", "model.lr": 0.001, "fed.fraction": 0.1, "fed.progress": True}
    requested = {**recorded, "model.lr": 0.005, "fed.progress": False, "fed.fraction": 1e-1, "fed.new": 3}
    assert compare_configs(recorded, requested) == {"model.lr": (0.001, 0.005)}
    assert compare_configs(recorded, {**recorded, "fed.fraction": 0.2})["fed.fraction"] == (0.1, 0.2)
    assert "fed.eval_every" in HARMLESS and "fed.aggregation" not in HARMLESS
    assert flatten({"a": {"b": {"c": 1}, "d": {}}}) == {"a.b.c": 1, "a.d": {}}


def test_check_resume_refuses_in_one_line_and_force_cannot_change_the_rebuilt_keys():
    with pytest.raises(UsageError, match=r"fed.fraction 0.1 -> 0.2.*--resume_changes true") as err:
        check_resume({"fed.fraction": (0.1, 0.2)}, "fedkseed", force=False)
    assert "\n" not in str(err.value)
    check_resume({"fed.fraction": (0.1, 0.2)}, "fedkseed", force=True)  # deliberate: allowed
    with pytest.raises(UsageError, match=r"model.lr 0.001 -> 0.005.*cannot change on resume"):
        check_resume({"model.lr": (0.001, 0.005)}, "fedkseed", force=True)
    check_resume({"model.lr": (0.001, 0.005)}, "fedit", force=True)  # tensor methods hold the weights
    with pytest.raises(UsageError, match=r"fed.num_seeds 64 -> 32"):
        check_resume({"fed.num_seeds": (64, 32)}, "fedkseed-pro", force=True)


def _resume(model_dir, data_root, run, extra=()):
    ckpt = ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    return fed_args(model_dir, data_root, run, rounds=2) + ["--fed.rouge_at_end", "false", *ckpt, *extra]


@pytest.fixture
def one_round(tiny_model_dir, data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fedkseed"])  # no LightningCLI warning about pytest's own argv
    run = tmp_path / "run"
    main(fed_args(tiny_model_dir, data_root, run, rounds=1) + ["--fed.rouge_at_end", "false"])
    return run


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_resume_with_a_changed_lr_is_refused_naming_both_values(one_round, tiny_model_dir, data_root, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(_resume(tiny_model_dir, data_root, one_round, ["--model.lr", "5e-3"]))
    assert exit_.value.code == 2
    line = _error_line(capsys)
    assert "model.lr 0.001 -> 0.005" in line and line.startswith("fedkseed: error: resuming would change")
    for flag, old, new in (("--fed.num_seeds", 64, 32), ("--method", "'fedkseed-pro'", "'fedkseed'")):
        with pytest.raises(SystemExit):
            main(_resume(tiny_model_dir, data_root, one_round, [flag, str(new).strip("'")]))
        assert f"{flag[2:]} {old} -> {new}" in _error_line(capsys)


def test_a_deliberate_change_is_recorded_and_harmless_ones_pass(one_round, tiny_model_dir, data_root, capsys):
    with pytest.raises(SystemExit):
        main(_resume(tiny_model_dir, data_root, one_round, ["--fed.equal_weights", "true"]))
    assert "fed.equal_weights False -> True" in _error_line(capsys)
    extra = ["--fed.equal_weights", "true", "--resume_changes", "true", "--fed.eval_every", "2"]
    main(_resume(tiny_model_dir, data_root, one_round, extra))
    s = json.loads((one_round / "summary.json").read_text())
    assert s["finished"] and s["rounds"] == 2
    assert s["config_changes"] == [
        {"from_round": 2, "changes": {"fed.equal_weights": {"old": False, "new": True}}}
    ]


def test_an_older_checkpoint_is_compared_through_its_hparams_and_config_yaml(tmp_path):
    from kit.resume_guard import recorded_config

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("method: fedkseed\nfed:\n  fraction: 0.1\ntrainer:\n  max_epochs: 3\n")
    ckpt = {"callbacks": {"FederatedLoop": {"rounds_done": 1}}, "hyper_parameters": {"lr": 0.001, "_x": 1}}
    recorded = recorded_config(ckpt, run / "checkpoints" / "last.ckpt", "FederatedLoop")
    assert recorded == {"method": "fedkseed", "fed.fraction": 0.1, "model.lr": 0.001}
    ckpt["callbacks"]["FederatedLoop"]["experiment"] = {"model.lr": 0.002}  # a recording wins
    assert recorded_config(ckpt, run / "checkpoints" / "last.ckpt", "FederatedLoop") == {"model.lr": 0.002}
