"""The `fedkseed` command (also `python -m kit`).

    fedkseed fit -c recipes/quickstart.yaml                 # train, writes runs/<recipe>-<time>/
    fedkseed fit -c recipes/quickstart.yaml -c recipes/methods/fedit.yaml   # a baseline, same harness
    fedkseed fit -c recipes/quickstart.yaml --run_dir runs/qs --fed.local_steps 5
    fedkseed fit -c recipes/quickstart.yaml --run_dir runs/qs --ckpt_path runs/qs/checkpoints/last.ckpt
    fedkseed fit --help                                     # every option, documented
    fedkseed compare -c recipes/compare/smoke.yaml --out runs/smoke   # a grid of methods x seeds
    fedkseed export --run runs/qs --out qs.seeds            # the fine-tune as a few-KB seed file
    fedkseed materialize qs.seeds --out models/qs           # ... and back to a Hugging Face folder

Config is LightningCLI/jsonargparse: `method` = the federated method, `model` = FedKSeedModule (the
client's model and the methods' hyperparameters), `data` =
FederatedDataModule, `fed` = FederatedLoop (federation args), `trainer` = Lightning's Trainer
(`max_epochs` = rounds, `devices`/`strategy: fed_ddp` for several processes).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

import kit.strategy  # noqa: F401  (registers the fed_ddp strategy)
from kit.checkpoint import LOOP_STATE_KEY, RoundCheckpoint, load_checkpoint
from kit.cli_errors import OneLineParser, ensure_writable, quiet_seed, run_guarded
from kit.data.datamodule import FederatedDataModule
from kit.loop import FederatedLoop
from kit.methods import methods_help
from kit.metrics_csv import RoundCSVLogger
from kit.module import FedKSeedModule, MethodName
from kit.resume_guard import experiment_config, guard_resume

RUN_DIR_ENV = "FEDKSEED_RUN_DIR"


def resolve_run_dir(run_dir: str | None) -> str:
    """The run directory: --run_dir, else one named by time, shared with DDP child processes."""
    if run_dir:
        os.environ[RUN_DIR_ENV] = run_dir
        return run_dir
    if RUN_DIR_ENV not in os.environ:
        os.environ[RUN_DIR_ENV] = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    return os.environ[RUN_DIR_ENV]


class FedKSeedCLI(LightningCLI):
    """LightningCLI with the federation callback as the `fed` group, a run directory and loggers."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(FederatedLoop, "fed")
        parser.add_argument(
            "--method",
            type=MethodName,
            default="fedkseed",
            help=methods_help(),
        )
        parser.link_arguments("method", "model.method")
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Run directory for config, metrics.csv, checkpoints, summary.json "
            "(default runs/<date-time>).",
        )
        parser.add_argument(
            "--wandb",
            type=bool,
            default=False,
            help="Also log to Weights & Biases (set WANDB_MODE=offline to log without an account).",
        )
        parser.add_argument("--wandb_project", type=str, default="fedkseed", help="W&B project name.")
        parser.add_argument(
            "--resume_changes",
            type=bool,
            default=False,
            help="With --ckpt_path: continue under changed experiment settings (refused otherwise); "
            "the change and its round are recorded in summary.json (config_changes).",
        )
        parser.link_arguments("model.model", "data.tokenizer")
        parser.set_defaults(
            {
                "trainer.enable_progress_bar": False,
                "trainer.num_sanity_val_steps": 0,
                "trainer.use_distributed_sampler": False,
                "trainer.logger": False,
                "trainer.enable_model_summary": False,
            }
        )

    def _instantiate_trainer(self, config: dict, callbacks: list):
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = resolve_run_dir(cfg.get("run_dir"))
        ensure_writable(run_dir)  # unwritable: one line now, not a traceback mid-run
        config["default_root_dir"] = run_dir
        loggers = [RoundCSVLogger(run_dir)]
        if cfg.get("wandb"):
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(project=cfg.get("wandb_project"), save_dir=run_dir))
        config["logger"] = loggers
        callbacks.append(RoundCheckpoint(Path(run_dir) / "checkpoints"))  # after every round, atomic
        return super()._instantiate_trainer(config, callbacks)

    def _set_seed(self) -> None:
        quiet_seed(super()._set_seed)  # no "Seed set to N" line: the seed is in config.yaml

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyperparameters right after parsing, with a bare torch.load:
        # refuse a missing, truncated or corrupt checkpoint first, in one line (torch.load fails deep
        # in its zip reader on a truncated file and loads a corrupted one silently)
        self._config_changes: list[dict] = []
        cfg = self.config["fit"] if self.config.get("subcommand") == "fit" else None
        if cfg is not None and cfg.get("ckpt_path"):
            ckpt = load_checkpoint(cfg["ckpt_path"])
            past = ckpt["callbacks"][LOOP_STATE_KEY].get("config_changes", [])
            self._config_changes = guard_resume(
                ckpt, cfg["ckpt_path"], cfg.as_dict(), LOOP_STATE_KEY, cfg.get("resume_changes")
            )
            if len(self._config_changes) > len(past):
                return  # a deliberate change: the requested values apply, not the checkpoint's hparams
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        loop = next(cb for cb in self.trainer.callbacks if isinstance(cb, FederatedLoop))
        loop.experiment = experiment_config(self.config["fit"].as_dict())
        loop.config_changes = self._config_changes


def main(argv: list[str] | None = None) -> None:
    """Entry point of `fedkseed` and `python -m kit`."""
    from_process = argv is None  # LightningCLI warns when given args while sys.argv has some
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "eval":
        from eval.cli import main as eval_main
        from kit.rebuild import load_run_model

        eval_main(argv[1:], load_run_model)
        return
    if argv and argv[0] in ("export", "materialize"):
        from kit.finetune_cli import export_main, materialize_main

        (export_main if argv[0] == "export" else materialize_main)(argv[1:])
        return
    if argv and argv[0] == "compare":
        from kit.compare.cli import main as compare_main

        sys.exit(run_guarded("fedkseed compare", compare_main, argv[1:]))
    run_guarded(
        "fedkseed",
        FedKSeedCLI,
        FedKSeedModule,
        FederatedDataModule,
        args=None if from_process else argv,
        save_config_kwargs={"overwrite": True},
        parser_class=OneLineParser,
    )


if __name__ == "__main__":
    main()
