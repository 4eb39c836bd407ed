"""IIANet visual inputs for training: precomputed lip embeddings when present, raw mouth frames otherwise.

:class:`LipVisualDataset` yields, for every (mixture, target speaker) row of IIANet's split lists, either that
speaker's ``<stem>_embedding.npz`` (``[512, T]``, written by ``configs/lip_resnet18.yaml``) or, when it is
missing or unreadable, the evaluation-preprocessed mouth frames with ``cached = False``.
:func:`collate_visual` keeps both kinds in one batch, and :class:`CachedLipEncoder` runs the frozen front end
on exactly the uncached rows, so a batch mixing cached and uncached samples gives what an all-uncached batch
gives. (Skipping the encoder for a whole batch whenever precomputed features are switched on, as the upstream
fallback does, silently feeds raw frames where embeddings belong as soon as one file is missing.)

Both paths embed a clip through :func:`~lit_features.models.lip_resnet.embed_mouth_clips` after
:func:`~lit_features.models.lip_resnet.preprocess_mouth_frames`, so cached and uncached features are equal.
Cached features cannot carry training-time augmentation (random crop, flip); the fallback therefore uses the
evaluation preprocessing too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from lit_features.data.list_files import iianet_folders, read_split_list
from lit_features.data.manifest_error import ManifestError
from lit_features.models.lip_resnet import (
    EMBEDDING_DIM,
    LipReadingResNet18,
    embed_mouth_clips,
    load_lip_frontend,
    preprocess_mouth_frames,
)

log = logging.getLogger(__name__)

EMBEDDING_SUFFIX = "_embedding.npz"
EMBEDDING_KEY = "embedding"


def embedding_path(mouth: str | os.PathLike) -> Path:
    """Where the precompute writes the embedding of a mouth clip: ``x.npz`` -> ``x_embedding.npz``."""
    mouth = Path(mouth)
    return mouth.with_name(mouth.stem + EMBEDDING_SUFFIX)


@dataclass(frozen=True)
class SpeakerRow:
    """One training example: a mixture and the speaker to extract from it (their wav and mouth clip)."""

    mix: str
    source: str
    mouth: str
    n_samples: int
    split: str
    speaker: str


def _resolve(root: Path, path: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))


def read_speaker_rows(
    split_root: str | os.PathLike, split: str, root: str | os.PathLike | None = None
) -> list[SpeakerRow]:
    """Every (mixture, speaker) row of ``split`` (``train``/``val``/``test``/``all``), s1 rows then s2 rows.

    Relative paths resolve as IIANet opens them: against the working directory, or ``root`` when given —
    the same rule as the precompute (``--data.root``), so embedding files line up.
    """
    base = Path(root) if root is not None else Path.cwd()
    out = []
    for folder in iianet_folders(split_root, split):
        sub = folder.name
        mixes = read_split_list(folder / "mix.json", "[wav, n_samples]")
        for speaker in ("s1", "s2"):
            file = folder / f"{speaker}.json"
            rows = read_split_list(file, "[wav, mouth_npz, n_samples]")
            if len(rows) != len(mixes):
                raise ManifestError(file, f"has {len(rows)} rows but mix.json has {len(mixes)}; they pair up by line")
            for i, (mix, row) in enumerate(zip(mixes, rows)):
                if not (isinstance(row, list) and len(row) >= 3 and all(isinstance(v, str) for v in row[:2])):
                    raise ManifestError(file, f"expected [wav, mouth_npz, n_samples], got {row!r}", i)
                if not (isinstance(mix, list) and mix and isinstance(mix[0], str)):
                    raise ManifestError(folder / "mix.json", f"expected [wav, n_samples], got {mix!r}", i)
                out.append(
                    SpeakerRow(
                        _resolve(base, mix[0]),
                        _resolve(base, row[0]),
                        _resolve(base, row[1]),
                        int(row[2]),
                        sub,
                        speaker,
                    )
                )
    return out


def load_mouth_clip(path: str | os.PathLike) -> torch.Tensor:
    """The mouth clip at ``path`` (``data``: uint8 ``[T, H, W]``) preprocessed to ``[1, T, 88, 88]``.

    Raises:
        ValueError: naming the file and the expected array when ``data`` is missing or has the wrong shape.
    """
    with np.load(path, allow_pickle=False) as archive:
        if "data" not in archive.files:
            raise ValueError(
                f"{os.fspath(path)}: no array named 'data' (found {archive.files}); expected a uint8 [T, H, W] "
                "grayscale array with H, W >= 88"
            )
        frames = archive["data"]
    return preprocess_mouth_frames(frames, source=path)


def load_embedding(path: str | os.PathLike) -> torch.Tensor | None:
    """The ``[512, T]`` embedding stored at ``path``, or ``None`` when it is absent, unreadable or misshaped."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            array = archive[EMBEDDING_KEY]
    except Exception as err:  # a partial or foreign file must not stop training: use the frames instead
        log.warning("%s: unreadable (%s: %s); using the raw mouth frames", path, type(err).__name__, err)
        return None
    if array.ndim != 2 or array.shape[0] != EMBEDDING_DIM or array.dtype.kind != "f":
        log.warning(
            "%s: expected float [%d, T], got %s %s; using the raw frames", path, EMBEDDING_DIM, array.dtype, array.shape
        )
        return None
    return torch.from_numpy(array.astype(np.float32, copy=False))


class LipVisualDataset(Dataset):
    """Visual input of each (mixture, target speaker) row: cached embedding, or preprocessed frames.

    Items are dicts with ``cached`` (bool), ``embedding`` (``[512, T]`` or ``None``), ``frames``
    (``[1, T, 88, 88]`` or ``None``), and the row's ``mix``, ``source``, ``mouth`` paths and ``n_samples``
    (audio loading is left to the caller). Batch them with :func:`collate_visual`.

    Args:
        rows: the examples (see :func:`read_speaker_rows` / :meth:`from_split`).
        use_precomputed: read ``<stem>_embedding.npz`` when present (``False``: always frames, the original
            training path).
    """

    def __init__(self, rows: Sequence[SpeakerRow], use_precomputed: bool = True):
        self.rows = list(rows)
        self.use_precomputed = use_precomputed

    @classmethod
    def from_split(
        cls,
        split_root: str | os.PathLike,
        split: str = "train",
        use_precomputed: bool = True,
        root: str | os.PathLike | None = None,
    ) -> LipVisualDataset:
        """The dataset of one IIANet split (``train``, ``val``, ``test`` or ``all``); relative paths in the lists
        resolve against ``root`` (default: the working directory, as IIANet opens them)."""
        return cls(read_speaker_rows(split_root, split, root), use_precomputed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        item = {"mix": row.mix, "source": row.source, "mouth": row.mouth, "n_samples": row.n_samples}
        embedding = load_embedding(embedding_path(row.mouth)) if self.use_precomputed else None
        if embedding is not None:
            return {**item, "cached": True, "embedding": embedding, "frames": None}
        return {**item, "cached": False, "embedding": None, "frames": load_mouth_clip(row.mouth)}


@dataclass
class VisualBatch:
    """A batch of visual inputs; uncached rows of ``embedding`` are zeros until :class:`CachedLipEncoder` runs.

    Attributes:
        embedding: ``[B, 512, T]`` cached embeddings (zeros where ``cached`` is False).
        frames: ``[U, 1, T, 88, 88]`` preprocessed clips of the U uncached rows, in batch order (``None`` if U = 0).
        cached: ``[B]`` bool.
        mouths: mouth clip path of each row (mixture and source wavs in ``mixes`` / ``sources``).
    """

    embedding: torch.Tensor
    frames: torch.Tensor | None
    cached: torch.Tensor
    mouths: list[str]
    mixes: list[str]
    sources: list[str]
    n_samples: list[int]


def collate_visual(items: list[dict]) -> VisualBatch:
    """Batch :class:`LipVisualDataset` items of one length T, cached and uncached alike.

    Raises:
        ValueError: when the clips differ in length (IIANet trains on fixed-length segments), naming them.
    """
    lengths = [item["embedding"].shape[-1] if item["cached"] else item["frames"].shape[1] for item in items]
    if len(set(lengths)) != 1:
        listing = ", ".join(f"{i['mouth']} (T={t})" for i, t in zip(items, lengths))
        raise ValueError(f"clips of one batch must share their length T; got {listing}")
    embedding = torch.zeros(len(items), EMBEDDING_DIM, lengths[0])
    for i, item in enumerate(items):
        if item["cached"]:
            embedding[i] = item["embedding"]
    uncached = [item["frames"] for item in items if not item["cached"]]
    return VisualBatch(
        embedding=embedding,
        frames=torch.stack(uncached) if uncached else None,
        cached=torch.tensor([item["cached"] for item in items], dtype=torch.bool),
        mouths=[item["mouth"] for item in items],
        mixes=[item["mix"] for item in items],
        sources=[item["source"] for item in items],
        n_samples=[item["n_samples"] for item in items],
    )


class CachedLipEncoder(nn.Module):
    """Completes a :class:`VisualBatch`: cached rows pass through, the frozen encoder embeds the others.

    The encoder stays in eval mode and frozen even when the surrounding model trains (the embeddings it
    replaces were made that way).

    Args:
        encoder: the lip-reading front end (e.g. from :meth:`from_checkpoint`).
    """

    def __init__(self, encoder: LipReadingResNet18):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> CachedLipEncoder:
        """Wraps the front end loaded from ``lrw_resnet18_mstcn_adamw_s3.pth.tar`` (TCN head dropped)."""
        return cls(load_lip_frontend(path))

    def train(self, mode: bool = True) -> CachedLipEncoder:
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, batch: VisualBatch) -> torch.Tensor:
        """``[B, 512, T]`` embeddings of every row of ``batch``, on the device of ``batch.embedding``.

        Raises:
            ValueError: when the number of frame clips does not match the number of uncached rows.
        """
        missing = (~batch.cached).nonzero().flatten().tolist()
        given = 0 if batch.frames is None else batch.frames.shape[0]
        if given != len(missing):
            raise ValueError(
                f"batch has {len(missing)} uncached rows but {given} frame clips; build it with collate_visual"
            )
        if not missing:
            return batch.embedding
        with torch.no_grad():
            computed = torch.stack(embed_mouth_clips(self.encoder, batch.frames))
        out = batch.embedding.clone()
        out[missing] = computed.to(out.device, out.dtype)
        return out
