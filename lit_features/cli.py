"""The LightningCLI of lit_features: fit/validate/test/predict from YAML, with the feature writer on predict.

Errors the user caused come out as :class:`~lit_features.errors.UserError` (printed as one line by
``python -m lit_features``): a command line jsonargparse rejects (:class:`CommandLineError`), an option
value an object refuses while it is built from the configuration (:class:`ConfigError`), and any user error
raised while building (e.g. missing weights), which jsonargparse wraps.
"""

from __future__ import annotations

import linecache
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_features import child_ranks
from lit_features.accelerators import resolve_trainer_flags
from lit_features.dashboards import LiveExtractionMetrics, RunIdentity
from lit_features.data.cpu_sharing import ModelThreadsFollowData
from lit_features.errors import CommandLineError, ConfigError, UserError, describe_parse_error, find_user_error
from lit_features.predict_report import RunReport, SampleRateProgressBar
from lit_features.store.writer import FeatureWriter

PACKAGE_DIR = Path(__file__).resolve().parent


def _may_log(logger: Any) -> bool:
    """Whether a Trainer's ``logger`` argument may give it a logger (``None``: Lightning's default one)."""
    return logger is not False and not (isinstance(logger, (list, tuple)) and not logger)


class FeatureTrainer(Trainer):
    """A Trainer whose ``predict`` keeps no outputs in memory by default (the writer persists them).

    Unless a progress bar is configured (or disabled), it shows samples/s and failures during predict; a
    predict run logs one first and one last line (:mod:`lit_features.predict_report`). With a logger, a predict
    run's progress is logged live (:class:`~lit_features.dashboards.LiveExtractionMetrics`). Also accepts
    ``accelerator="npu"`` (Ascend, when ``torch_npu`` is installed): the NPU accelerator, strategy and
    precision are filled in by :func:`lit_features.accelerators.resolve_trainer_flags`. In a multi-device run
    on one node, rank 0 watches the ranks Lightning launches and reports their errors
    (:mod:`lit_features.child_ranks`). With the model on the CPU, its threads follow the data
    (:class:`~lit_features.data.cpu_sharing.ModelThreadsFollowData`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs = resolve_trainer_flags(kwargs)
        callbacks = kwargs.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if not any(isinstance(c, ModelThreadsFollowData) for c in callbacks):
            callbacks.append(ModelThreadsFollowData())  # does nothing unless the model shares the CPU
        if not any(isinstance(c, RunReport) for c in callbacks):
            # After the writer (its last line reads the writer's run summary), before the progress bar (its
            # first line comes before the bar).
            callbacks.append(RunReport())
        if _may_log(kwargs.get("logger")) and not any(isinstance(c, LiveExtractionMetrics) for c in callbacks):
            # Before the feature writer: a failure's preview is saved before the writer logs the failure.
            callbacks.insert(0, LiveExtractionMetrics())
        if kwargs.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(SampleRateProgressBar())
        kwargs["callbacks"] = callbacks
        super().__init__(*args, **kwargs)  # keep this form: jsonargparse reads Trainer's arguments through it

    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Runs the full optimization routine."""
        with child_ranks.watching(self):
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only=weights_only)

    def validate(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> Any:
        """Perform one evaluation epoch over the validation set."""
        with child_ranks.watching(self):
            return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only=weights_only)

    def test(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> Any:
        """Perform one evaluation epoch over the test set."""
        with child_ranks.watching(self):
            return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only=weights_only)

    def predict(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        return_predictions: bool | None = False,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
    ) -> Any:
        """Run inference over the datamodule and write every sample through the feature writer."""
        with child_ranks.watching(self):
            return super().predict(
                model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only=weights_only
            )


def _deliberate_value_error(error: BaseException) -> tuple[ValueError, str] | None:
    """A ``ValueError`` that lit_features code raised on purpose (a ``raise`` statement) while building an object.

    Returns the error and the name of the class whose ``__init__`` was running. Such an error is argument
    validation: the configured value is the cause. A ``ValueError`` that escapes from elsewhere (a library,
    or an implicit one such as a failed unpacking) stays a bug.
    """
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ValueError) and not isinstance(current, UserError):
            frames = []
            tb = current.__traceback__
            while tb is not None:
                frames.append(tb)
                tb = tb.tb_next
            last = frames[-1] if frames else None
            if last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR):
                source = linecache.getline(last.tb_frame.f_code.co_filename, last.tb_lineno).strip()
                if source.startswith("raise "):
                    owners = [
                        type(f.tb_frame.f_locals["self"]).__name__
                        for f in frames
                        if f.tb_frame.f_code.co_name == "__init__" and "self" in f.tb_frame.f_locals
                    ]
                    return current, owners[0] if owners else ""
        current = current.__cause__
    return None


class LitFeaturesCLI(LightningCLI):
    """Adds ``--writer.*`` (a :class:`FeatureWriter`) to the predict subcommand; reports errors as user errors."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("exit_on_error", False)  # raise instead of printing the whole usage: see parse_arguments
        return super().init_parser(**kwargs)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_lightning_class_args(FeatureWriter, "writer")
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            given = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:]
            command = next((a for a in given if not a.startswith("-")), "<command>")
            raise CommandLineError(describe_parse_error(str(err), f"python -m lit_features {command} --help")) from err

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            if find_user_error(err) is not None:
                raise
            if isinstance(err, MisconfigurationException):  # Lightning refusing trainer options
                raise ConfigError(f"trainer: {err}") from err
            found = _deliberate_value_error(err)
            if found is None:
                raise
            cause, owner = found
            raise ConfigError(f"{owner + ': ' if owner else ''}{cause} (check the configuration)") from err


def run_cli(args: list[str] | None = None) -> LitFeaturesCLI:
    import lit_features.extractors  # noqa: F401  (registers every extractor for short class names)

    return LitFeaturesCLI(
        LightningModule,
        LightningDataModule,
        trainer_class=FeatureTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunIdentity,  # the run's identity to its loggers (no config file written)
        auto_configure_optimizers=False,
        seed_everything_default=0,  # what Lightning falls back to anyway, without its "No seed found" warning
        args=args,
    )
