"""The held-out set a run's loop scored, read back from its `config.yaml`, for `fedkseed eval --run`.

    from eval.run_settings import eval_settings
    eval_settings("runs/quickstart", {})   # {"suites": ["dolly"], "seed": 42, "dolly_size": 200, ...}

The loop (kit/evaluation.py `rouge`) scores the run's own data config: its dataset (or
`fed.rouge_suites`), `data.heldout_category`, `data.eval_size` Dolly examples sampled with `data.seed`,
at most `fed.rouge_limit` per suite. `fedkseed eval --run DIR` takes the same, so it rescores what the
loop scored; an option given on the command line still wins.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kit.errors import UsageError

STANDALONE = {
    "suites": ["ni", "dolly"],
    "data_root": None,
    "seed": 42,
    "dolly_size": 200,
    "heldout_category": "summarization",
    "limit": None,
}
"""The eval's own defaults, for a model that is not a run (`python -m eval --model ...`)."""


def run_settings(run_dir: str | Path) -> dict:
    """The keys of `STANDALONE` as `run_dir`'s loop used them (from its resolved `config.yaml`)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UsageError(f"{path} not found: --run must name a fedkseed run directory (it holds config.yaml)")
    config = yaml.safe_load(path.read_text()) or {}
    data, fed = config.get("data") or {}, config.get("fed") or {}
    data = {**_datamodule_defaults(), **data}  # a resolved config has every key; older ones may not
    return {
        "suites": list(fed.get("rouge_suites") or [data["dataset"]]),
        "data_root": data["data_root"],
        "seed": data["seed"],
        "dolly_size": data["eval_size"],
        "heldout_category": data["heldout_category"],
        "limit": fed.get("rouge_limit"),
    }


def eval_settings(run_dir: str | Path | None, given: dict) -> dict:
    """The eval's settings: those in `given` (options set on the command line), else the run's (with a
    `run_dir`), else `STANDALONE`'s."""
    base = run_settings(run_dir) if run_dir is not None else STANDALONE
    return {key: given.get(key, value) for key, value in base.items()}


def _datamodule_defaults() -> dict:
    """`--data.*` defaults: the keyword defaults of `FederatedDataModule`."""
    import inspect

    from kit.data.datamodule import FederatedDataModule

    params = inspect.signature(FederatedDataModule.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
