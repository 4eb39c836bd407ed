"""Base of every extractor: a frozen, predict-only LightningModule that declares its own preprocessing.

Subclasses set ``extractor_name`` (the registry name) and ``hub_id`` (where real weights come from), and
implement :meth:`preprocessor`, :meth:`load_model` and :meth:`extract`. Weights load in ``configure_model``,
which Lightning calls after the DataModule has validated the manifest and the writer has checked the store,
so a broken manifest or a mismatched store stops the run before any weights are read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Collection, Iterator
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch

from lit_features.data.dataset import Batch
from lit_features.data.preprocess import Preprocessor, omit_quiet_defaults
from lit_features.errors import UserError
from lit_features.models.stand_in import is_stand_in
from lit_features.records import Failure, FeatureRecord, PredictionOutput
from lit_features.store.fingerprint import weight_identity
from lit_features.store.layout import STORE_FORMAT_VERSION

log = logging.getLogger(__name__)

EXTRACTORS: dict[str, type[FeatureExtractor]] = {}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (e.g. unused text-tower keys when loading only a vision tower)."""
    loggers = [logging.getLogger(name) for name in ("transformers", "transformers.modeling_utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def is_about_inputs(error: BaseException) -> bool:
    """Whether an exception raised during ``extract`` may be blamed on the batch's samples.

    PyTorch reports a dead DataLoader worker by raising from its SIGCHLD handler, i.e. inside whatever the main
    thread runs at that moment: that says nothing about the samples in the model and must end the run.
    """
    return not str(error).startswith("DataLoader worker")


def with_decode_rules(fingerprint: dict[str, Any], preprocessor: Preprocessor) -> dict[str, Any]:
    """``fingerprint`` with a ``decode`` entry when ``preprocessor`` decodes videos: features of stores made
    under other decoding rules may differ, so such stores are refused rather than resumed."""
    rules = preprocessor.decode_rules()
    return {**fingerprint, "decode": rules} if rules else fingerprint


class MissingWeightsError(UserError, FileNotFoundError):
    """The configured model path does not exist; the message says how to get the weights."""


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def looks_like_hub_id(path: str) -> bool:
    """``org/name`` with no local meaning (not ``./x``, ``/x`` or a ``pretrained_model/...`` folder)."""
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~")) and parts[0] != "pretrained_model"


class FeatureExtractor(pl.LightningModule):
    """Frozen, eval-mode, inference-only feature extractor.

    Args:
        model_path: local weights folder/file, or a hub id (``org/name``) resolved by ``from_pretrained``.
        dtype: compute and storage dtype of the model (``bfloat16``, ``float16`` or ``float32``).
        trust_remote_code: allow model code from the weights folder; off unless a config turns it on.
    """

    extractor_name: ClassVar[str] = ""
    hub_id: ClassVar[str] = ""
    fingerprint_exclude: ClassVar[tuple[str, ...]] = ("model_path",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.extractor_name:
            EXTRACTORS[cls.extractor_name] = cls

    def __init__(self, model_path: str, dtype: str = "bfloat16", trust_remote_code: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.model_path = model_path
        self.dtype_name = dtype
        self.compute_dtype = resolve_dtype(dtype)
        self.trust_remote_code = trust_remote_code
        self.check_weights_present(model_path)
        self.is_stand_in = os.path.exists(model_path) and is_stand_in(model_path)
        self.model: torch.nn.Module | None = None

    # -- weights
    def check_weights_present(self, path: str) -> None:
        """Fail at start, not after an hour, when the weights are not where the config says."""
        if os.path.exists(path) or looks_like_hub_id(path):
            return
        hint = f"huggingface-cli download {self.hub_id} --local-dir {path}" if self.hub_id else "download the weights"
        raise MissingWeightsError(
            f"{type(self).__name__}: model weights not found at {path!r}. Get them with `{hint}`, point "
            f"model.model_path at them, or run `python tools/make_tiny_models.py --out pretrained_model` for tiny "
            "random stand-ins (for trying the pipeline only)."
        )

    def load_model(self) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.is_stand_in:
            log.warning(
                "!!! %s: %s holds TINY RANDOM STAND-IN weights: features are meaningless; the store records this.",
                type(self).__name__,
                self.model_path,
            )
        model = self.load_model()
        model.requires_grad_(False)
        model.eval()
        self.model = model

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Frozen extractors stay in eval mode whatever Lightning asks (dropout / batch-norm statistics).
        return super().train(False)

    # -- contract with the data side and the store
    def preprocessor(self) -> Preprocessor:  # pragma: no cover - abstract
        raise NotImplementedError

    def record_preprocessing(self, preprocessor: Preprocessor, derived: Collection[str] = ()) -> None:
        """Put the preprocessing options into the hyperparameters, defaults included.

        An extractor takes its preprocessor's fields as ``**preprocess`` (defined once, in the dataclass;
        jsonargparse follows the keyword arguments into it, so the flat ``--model.<field>`` flags stay); only the
        ones passed reach ``hparams`` by themselves. Recording every init field but ``derived`` (what the
        extractor computes from its weights) keeps logs, checkpoints and the fingerprint's ``params`` the same
        whether a value was given or defaulted.
        """
        fields = [f.name for f in dataclasses.fields(preprocessor) if f.init and f.name not in derived]
        self.save_hyperparameters({**self.hparams, **{name: getattr(preprocessor, name) for name in fields}})

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the numbers (not output paths, batch size, workers or devices)."""
        # LightningCLI adds private entries (``_class_path``, ``_instantiator``): not part of the numbers.
        params = omit_quiet_defaults(
            {k: v for k, v in dict(self.hparams).items() if k not in self.fingerprint_exclude and not k.startswith("_")}
        )
        weights = weight_identity(self.model_path) if os.path.exists(self.model_path) else {"hub_id": self.model_path}
        return with_decode_rules(
            {
                "extractor": self.extractor_name or type(self).__qualname__,
                "params": params,
                "weights": weights,
                "preprocess": self.preprocessor().params(),
                "store_format": STORE_FORMAT_VERSION,
            },
            self.preprocessor(),
        )

    def store_fingerprints(self) -> dict[str, dict[str, Any]]:
        """One fingerprint per sub-store this extractor writes (``""`` is the output directory)."""
        return {"": self.fingerprint()}

    # -- inference
    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:  # pragma: no cover - abstract
        """Features of every sample in ``batch`` (same order as ``batch.keys``)."""
        raise NotImplementedError

    def sample_meta(self, batch: Batch, index: int) -> dict[str, Any]:
        """Small JSON-able metadata stored with each sample (the preprocessor's meta by default)."""
        return {k: v for k, v in batch.metas[index].items() if k != "entry"}

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> PredictionOutput:
        started = time.perf_counter()
        output = self._predict(batch, batch_idx)
        output.model_seconds = time.perf_counter() - started
        output.decode_seconds = getattr(batch, "decode_seconds", 0.0)
        output.transform_seconds = getattr(batch, "transform_seconds", 0.0)
        return output

    def _predict(self, batch: Batch, batch_idx: int) -> PredictionOutput:
        failures = list(batch.failures)
        if len(batch) == 0:
            return PredictionOutput([], failures)
        try:
            outputs = self.extract(batch.inputs, batch)
        except Exception as err:  # a model error costs this batch's samples, recorded; the run goes on
            if not is_about_inputs(err):
                raise
            log.exception("model failed on batch %d", batch_idx)
            failures += [
                Failure(k, s, "model", type(err).__name__, str(err)) for k, s in zip(batch.keys, batch.sources)
            ]
            return PredictionOutput([], failures)
        if len(outputs) != len(batch):
            raise RuntimeError(
                f"{type(self).__name__}.extract returned {len(outputs)} outputs for {len(batch)} samples"
            )
        records = [
            FeatureRecord(key, source, tensors, self.sample_meta(batch, i))
            for i, (key, source, tensors) in enumerate(zip(batch.keys, batch.sources, outputs))
        ]
        return PredictionOutput(records, failures)

    def configure_optimizers(self) -> None:
        return None
