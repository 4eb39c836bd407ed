"""The LightningCLI of lit_features: fit/validate/test/predict from YAML, with the feature writer on predict."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_features.accelerators import resolve_trainer_flags
from lit_features.progress import SampleRateProgressBar
from lit_features.store.writer import FeatureWriter


class FeatureTrainer(Trainer):
    """A Trainer whose ``predict`` keeps no outputs in memory by default (the writer persists them).

    Unless a progress bar is configured (or disabled), it shows samples/s and failures during predict. Also
    accepts ``accelerator="npu"`` (Ascend, when ``torch_npu`` is installed): the NPU accelerator, strategy and
    precision are filled in by :func:`lit_features.accelerators.resolve_trainer_flags`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs = resolve_trainer_flags(kwargs)
        callbacks = kwargs.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if kwargs.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            kwargs["callbacks"] = [*callbacks, SampleRateProgressBar()]
        super().__init__(*args, **kwargs)  # keep this form: jsonargparse reads Trainer's arguments through it

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
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only=weights_only)


class LitFeaturesCLI(LightningCLI):
    """Adds ``--writer.*`` (a :class:`FeatureWriter`) to the predict subcommand only."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_lightning_class_args(FeatureWriter, "writer")
        return parser


def run_cli(args: list[str] | None = None) -> LitFeaturesCLI:
    import lit_features.extractors  # noqa: F401  (registers every extractor for short class names)

    return LitFeaturesCLI(
        LightningModule,
        LightningDataModule,
        trainer_class=FeatureTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=None,
        auto_configure_optimizers=False,
        args=args,
    )
