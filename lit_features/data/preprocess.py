"""The contract between an extractor and the data side: a small picklable preprocessor and a media loader.

An extractor declares its input contract (which frames, what size, which normalisation) as a
:class:`Preprocessor`. The DataModule applies it in DataLoader workers through a :class:`MediaLoader`, which owns
all media I/O (sandboxed decoding). Preprocessors never hold model weights.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import torch

from lit_features.data.decode_sandbox import DecoderCrashed, DecodeSandbox, DecodeTimeout, RemoteError
from lit_features.data.decoder_scaling import DecoderScale
from lit_features.data.media import VIDEO_DECODE_RULES, DecodedVideo
from lit_features.data.media_cache import MediaCache
from lit_features.data.sample import Sample
from lit_features.data.sampling import FrameSampling
from lit_features.remote import RemoteAccessError, is_remote


class SampleFailure(Exception):
    """One sample could not be prepared; carries the pipeline stage (``decode`` or ``transform``)."""

    def __init__(self, stage: str, error: str, message: str):
        super().__init__(f"{stage}: {error}: {message}")
        self.stage, self.error, self.message = stage, error, message


class EntryError(ValueError):
    """A manifest entry lacks what this extractor needs; names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class MediaLoader:
    """Sandboxed access to a sample's media; every failure becomes a :class:`SampleFailure` (stage ``decode``).

    Remote media (URLs) are first copied into ``cache`` (stage ``fetch`` when that fails); messages name the URL.
    """

    def __init__(self, sandbox: DecodeSandbox, video_backend: str = "auto", cache: MediaCache | None = None):
        self.sandbox = sandbox
        self.video_backend = video_backend
        self.cache = cache if cache is not None else MediaCache()
        self.seconds = 0.0  # time spent waiting on media (fetching and decoding), for run summaries
        self.last_frame: Any = None  # a frame of the sample being prepared, for the preview of a failure

    def prefetch(self, paths: list[str | None]) -> None:
        """Start fetching the remote ones among ``paths`` (a batch's media) while earlier samples decode."""
        self.cache.prefetch(paths)

    def _local(self, path: str) -> str:
        if not is_remote(path):
            return path
        try:
            return self.cache.local_path(path)
        except RemoteAccessError as err:
            raise SampleFailure("fetch", type(err).__name__, str(err)) from None

    def _call(self, function: str, path: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            local = self._local(path)
            try:
                return self.sandbox.call(function, local, *args, **kwargs)
            except RemoteError as err:
                raise SampleFailure("decode", err.type_name, str(err).replace(local, path)) from None
            except (DecodeTimeout, DecoderCrashed) as err:
                raise SampleFailure("decode", type(err).__name__, str(err).replace(local, path)) from None
        finally:
            self.seconds += time.perf_counter() - started

    def video(
        self,
        path: str,
        sampling: FrameSampling,
        cut: list[float] | None = None,
        size: tuple[int, int] | None = None,
        scale: DecoderScale | None = None,
    ) -> DecodedVideo:
        """Frames of ``path`` chosen by ``sampling``; ``size`` = (H, W), or the one ``scale`` chooses from the
        source size, scales them while decoding (:func:`lit_features.data.media.decode_video`)."""
        decoded = self._call("video", path, sampling, cut, self.video_backend, size, scale)
        self.last_frame = decoded.frames[len(decoded.frames) // 2] if len(decoded.frames) else None
        return decoded

    def image(self, path: str, exif_transpose: bool = True) -> Any:
        """RGB ``uint8 [H, W, 3]``; ``exif_transpose=False`` keeps the stored orientation (EXIF ignored)."""
        self.last_frame = self._call("image", path, exif_transpose=exif_transpose)
        return self.last_frame

    def npz(self, path: str, key: str = "data") -> Any:
        return self._call("npz", path, key)


def default_collate(items: list[Any]) -> Any:
    """Stack tensors of equal shape; keep lists otherwise (variable-size samples stay correct)."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        if all(isinstance(i, torch.Tensor) and i.shape == first.shape and i.dtype == first.dtype for i in items):
            return torch.stack(items)
        return list(items)
    if isinstance(first, dict):
        return {k: default_collate([i[k] for i in items]) for k in first}
    return list(items)


#: Options added after stores were made without them, with the default that reproduces those stores: a
#: fingerprint leaves them out at that default (such stores stay resumable) and records them otherwise (a store
#: made one way refuses a run made the other, naming the option).
QUIET_DEFAULTS: dict[str, Any] = {"decoder_scaling": False}


def omit_quiet_defaults(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without the :data:`QUIET_DEFAULTS` options that are at their default."""
    return {k: v for k, v in params.items() if not (k in QUIET_DEFAULTS and v == QUIET_DEFAULTS[k])}


@dataclasses.dataclass
class Preprocessor:
    """Base class: subclasses are dataclasses whose fields are every parameter that changes the numbers.

    Override :meth:`__call__` (load media through ``media`` and return model inputs for one sample), and
    optionally :meth:`validate` (manifest-time checks) and :meth:`collate`.
    """

    required_fields = ("path",)
    #: Whether this preprocessor may decode videos (its stores then record the video decoding rules).
    decodes_video: ClassVar[bool] = True

    def validate(self, sample: Sample) -> None:
        """Raise :class:`EntryError` when ``sample`` cannot be processed by this extractor."""
        for name in self.required_fields:
            if sample.entry.get(name) in (None, ""):
                raise EntryError(name, "missing required field for this extractor")

    def __call__(self, sample: Sample, media: MediaLoader) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)

    def params(self) -> dict[str, Any]:
        """Parameters recorded in the store fingerprint."""
        return omit_quiet_defaults({"type": type(self).__qualname__, **dataclasses.asdict(self)})

    def decoder_scale(self) -> DecoderScale | None:
        """How the decoder may scale this job's video frames while decoding (``None``: never, the default)."""
        return None

    def decode_rules(self) -> dict[str, Any]:
        """What the store fingerprint records about decoding (nothing when no video is decoded): the seek rule,
        and how the decoder scales frames when the job lets it (``scale``)."""
        if not self.decodes_video:
            return {}
        scale = self.decoder_scale()
        return {**VIDEO_DECODE_RULES, "scale": scale.rule} if scale is not None else dict(VIDEO_DECODE_RULES)
