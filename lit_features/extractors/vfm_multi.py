"""Several VFM extractors over each video decoded once, one sub-store per model (``<output_dir>/<model>``).

Each sub-store fingerprints exactly as its single-model extractor would, so either can resume it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import torch

from lit_features.data.dataset import Batch
from lit_features.extractors.base import FeatureExtractor, MissingWeightsError, is_about_inputs
from lit_features.extractors.dinov2 import DINOv2Features
from lit_features.extractors.vfm import ShortClip, VFMFeatures, VideoClipPreprocessor
from lit_features.extractors.videomae import VideoMAEFeatures
from lit_features.extractors.videomae_v2 import VideoMAEv2Features
from lit_features.extractors.vjepa2 import VJEPA2Features
from lit_features.interfaces import ModelsReport
from lit_features.records import Failure, FeatureRecord, PredictionOutput

log = logging.getLogger(__name__)


VFM_MODELS: dict[str, tuple[type[VFMFeatures], str]] = {
    "VideoMAEv2": (VideoMAEv2Features, "vit_b_k710_dl_from_giant.pth"),
    "VideoMAE": (VideoMAEFeatures, "videomae-base"),
    "DINOv2": (DINOv2Features, "dinov2-base"),
    "VJEPA2": (VJEPA2Features, "vjepa2-vitl-fpc64-256"),
}
ModelName = Literal["VideoMAEv2", "VideoMAE", "DINOv2", "VJEPA2"]


class MultiVFMFeatures(FeatureExtractor):
    """Several VFM extractors over each video decoded once; one sub-store per model (``<output_dir>/<model>``).

    Each sub-store has the fingerprint the single-model extractor would give it, so a sub-store can be
    resumed by either. At the end ``<output_dir>/vfm_dimensions.txt`` and ``vfm_summary.json`` record each
    model's feature shape and dimension C, samples written, failures, and models skipped.

    Args:
        models: models to run, any of ``VideoMAEv2``, ``VideoMAE``, ``DINOv2``, ``VJEPA2``.
        model_root: folder holding the default weights (``vit_b_k710_dl_from_giant.pth``, ``videomae-base``,
            ``dinov2-base``, ``vjepa2-vitl-fpc64-256``).
        model_paths: per-model weights path (or hub id) overriding ``model_root/<default>``.
        skip_missing: skip a model whose weights are missing (one warning line each) instead of failing at start.
        num_frames: frames uniformly sampled per video.
        clip_height: frame height for VideoMAE, VideoMAE V2 and V-JEPA 2.
        clip_width: frame width for VideoMAE, VideoMAE V2 and V-JEPA 2.
        dinov2_height: frame height for DINOv2.
        dinov2_width: frame width for DINOv2.
        dinov2_chunk: DINOv2 frames per forward pass.
        vjepa2_rope_grid: V-JEPA 2 rotary positions (see :class:`VJEPA2Features`).
        short_clip: policy for videos shorter than ``num_frames``.
        dtype: model dtype for every model.
    """

    extractor_name = "vfm_multi"

    def __init__(
        self,
        models: list[ModelName] | None = None,
        model_root: str = "pretrained_model",
        model_paths: dict[str, str] | None = None,
        skip_missing: bool = False,
        num_frames: int = 48,
        clip_height: int = 160,
        clip_width: int = 240,
        dinov2_height: int = 420,
        dinov2_width: int = 630,
        dinov2_chunk: int = 128,
        vjepa2_rope_grid: Literal["input", "config"] = "input",
        short_clip: ShortClip = "stretch",
        dtype: str = "float32",
    ):
        super().__init__(model_root, dtype)
        names = list(models) if models is not None else list(VFM_MODELS)
        unknown = sorted(set(names) - set(VFM_MODELS)) + sorted(set(model_paths or {}) - set(VFM_MODELS))
        if unknown:
            raise ValueError(f"unknown VFM model(s) {unknown}; choose from {list(VFM_MODELS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"models lists a model twice: {names}")
        common = {"num_frames": num_frames, "short_clip": short_clip, "dtype": dtype}
        members: dict[str, VFMFeatures] = {}
        self.skipped: dict[str, str] = {}
        for name in names:
            cls, default = VFM_MODELS[name]
            path = (model_paths or {}).get(name) or os.path.join(model_root, default)
            kwargs: dict[str, Any] = {"model_path": path, **common}
            if name == "DINOv2":
                kwargs.update(height=dinov2_height, width=dinov2_width, chunk_size=dinov2_chunk)
            else:
                kwargs.update(height=clip_height, width=clip_width)
            if name == "VJEPA2":
                kwargs["rope_grid"] = vjepa2_rope_grid
            try:
                members[name] = cls(**kwargs)
            except MissingWeightsError as err:
                if not skip_missing:
                    raise
                self.skipped[name] = str(err)
                log.warning("skipping %s: weights not found at %s (skip_missing is on)", name, path)
        if not members:
            raise MissingWeightsError(
                "MultiVFMFeatures: no model left to run; weights are missing for all of " + ", ".join(names)
            )
        self.members = torch.nn.ModuleDict(members)
        self.is_stand_in = any(m.is_stand_in for m in members.values())
        self._preprocessor: VideoClipPreprocessor | None = None

    def check_weights_present(self, path: str) -> None:
        return None  # each model checks its own weights (and may be skipped)

    def preprocessor(self) -> VideoClipPreprocessor:
        if self._preprocessor is None:
            sizes = tuple(dict.fromkeys(m.size for m in self.members.values()))
            first = next(iter(self.members.values())).preprocessor()
            self._preprocessor = VideoClipPreprocessor(
                num_frames=first.num_frames, sizes=sizes, short_clip=first.short_clip
            )
        return self._preprocessor

    def fingerprint(self) -> dict[str, Any]:
        return {name: m.fingerprint() for name, m in self.members.items()}

    def store_fingerprints(self) -> dict[str, dict[str, Any]]:
        return {name: m.fingerprint() for name, m in self.members.items()}

    def configure_model(self) -> None:
        for member in self.members.values():
            member.configure_model()

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> PredictionOutput:
        failures = list(batch.failures)
        records: list[FeatureRecord] = []
        if len(batch) == 0:
            return PredictionOutput(records, failures)
        for name, member in self.members.items():
            try:
                feats = member.features(batch.inputs)
            except Exception as err:  # this model loses these samples; the other models keep theirs
                if not is_about_inputs(err):
                    raise
                log.exception("%s failed on batch %d", name, batch_idx)
                failures += [
                    Failure(k, s, "model", type(err).__name__, str(err), store=name)
                    for k, s in zip(batch.keys, batch.sources)
                ]
                continue
            for i, (key, source, feat) in enumerate(zip(batch.keys, batch.sources, feats)):
                meta = member.sample_meta(batch, i)
                records.append(FeatureRecord(key, source, {"feature": feat.contiguous()}, meta, store=name))
        return PredictionOutput(records, failures)

    def models_report(self) -> ModelsReport:
        """Every member (a sub-store each) and the models left out, for the writer's end-of-run report."""
        return ModelsReport(
            labels={name: name for name in self.members},
            dims={name: m.feature_dim for name, m in self.members.items()},
            skipped=dict(self.skipped),
            num_frames=self.preprocessor().num_frames,
        )
