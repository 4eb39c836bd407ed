"""Motion encoding of stored VFM features: ``{latent, motion_embedding, compression_ratio}`` per input sample.

A predict job over a feature store (``FeatureStoreDataModule``), not a video manifest: every sample of the
input store (e.g. ``outputs/vfm/VideoMAEv2``) is encoded by a trained motion autoencoder and written under
the same key. The checkpoint is a ``fit`` checkpoint (``.ckpt``) or an upstream
``{epoch, state_dict, config, mean_loss}`` file, used as is. Stored per sample, as upstream ``encode.py``
writes them: ``latent`` in the input's layout (``[T, H, W, latent_dim]`` for ``[T, H, W, C]`` features,
``[T, N, latent_dim]`` for ``[T, N, C]``), ``motion_embedding`` ``[T, latent_dim]`` (latent averaged over the
tokens) and ``compression_ratio`` (0-d, latent size / input size = ``latent_dim / input_dim``, 0.25 for
768 -> 192); the input's caption/video/model go in the meta.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from lit_features.data.dataset import Batch
from lit_features.data.feature_data import StoredFeaturePreprocessor
from lit_features.extractors.base import FeatureExtractor, MissingWeightsError
from lit_features.models.motion_checkpoint import load_motion_checkpoint
from lit_features.store.weights import sha256_file

#: Recorded in the fingerprint: stores written before the outputs followed upstream (latent flattened to
#: ``[T, N, latent_dim]``, ratio ``input_dim / latent_dim``) are refused rather than extended with new samples.
OUTPUT_LAYOUT = "latent in the input's layout; compression_ratio = latent_dim / input_dim"


class MotionEncodeFeatures(FeatureExtractor):
    """Encodes stored ``[T, N, C]`` / ``[T, H, W, C]`` features with a motion autoencoder.

    Args:
        model_path: ``fit`` checkpoint (``.ckpt``) or upstream ``{epoch, state_dict, config, mean_loss}`` file.
        feature: name of the input tensor in the input store.
        dtype: compute and storage dtype.
        allow_pickle: fully unpickle a checkpoint holding custom objects (only for files you trust).
    """

    extractor_name = "motion_encode"

    def __init__(
        self,
        model_path: str = "outputs/motion_ae/checkpoints/last.ckpt",
        feature: str = "feature",
        dtype: str = "float32",
        allow_pickle: bool = False,
    ):
        super().__init__(model_path, dtype)
        self.feature = feature
        self.allow_pickle = allow_pickle
        self._input_dim: int | None = None

    def check_weights_present(self, path: str) -> None:
        if os.path.isfile(path):
            return
        raise MissingWeightsError(
            f"{type(self).__name__}: motion autoencoder checkpoint not found at {path!r}. Train one with "
            "`python -m lit_features fit --config configs/motion_ae.yaml --data.store <vfm_store>` and point "
            "model.model_path at its checkpoint (or at an upstream {epoch, state_dict, config, mean_loss} file)."
        )

    def input_dim(self) -> int:
        """Channel count the checkpoint expects (read from the checkpoint once)."""
        if self._input_dim is None:
            model = self.model if self.model is not None else load_motion_checkpoint(self.model_path)
            self._input_dim = int(model.config.input_dim)
        return self._input_dim

    def preprocessor(self) -> StoredFeaturePreprocessor:
        return StoredFeaturePreprocessor(feature=self.feature, input_dim=self.input_dim())

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        # A retrained checkpoint keeps its name and size: identify the weights by content (the file is small).
        # 16 characters: what stores of this job recorded from the start (a longer digest would refuse them).
        digest = sha256_file(self.model_path, chars=16)
        fp["weights"] = {"file": os.path.basename(self.model_path), "sha256": digest}
        fp["outputs"] = OUTPUT_LAYOUT
        return fp

    def load_model(self) -> torch.nn.Module:
        return load_motion_checkpoint(self.model_path, allow_pickle=self.allow_pickle).to(self.compute_dtype)

    def extract(self, inputs: Any, batch: Batch) -> list[dict[str, torch.Tensor]]:
        assert self.model is not None
        items = list(inputs) if isinstance(inputs, torch.Tensor) else inputs
        outputs = []
        for x, source in zip(items, batch.sources):
            encoded = self.model.encode(x[None].to(self.device, self.compute_dtype), source=source)
            outputs.append(
                {
                    "latent": encoded["latent"][0].contiguous(),
                    "motion_embedding": encoded["motion_embedding"][0].contiguous(),
                    "compression_ratio": torch.tensor(encoded["compression_ratio"], dtype=torch.float32),
                }
            )
        return outputs

    def sample_meta(self, batch: Batch, index: int) -> dict[str, Any]:
        meta = dict(batch.metas[index].get("input_meta", {}))
        keep = {k: meta[k] for k in ("caption", "video", "model") if k in meta}
        return {**keep, "input_key": batch.keys[index], "input_file": batch.sources[index]}
