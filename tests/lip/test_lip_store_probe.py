"""``codecs.probe``: a complete sample file is recognised from its headers; a cut or foreign one is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lit_features.store.codecs import encode, probe


@pytest.mark.parametrize("codec", ["npz", "npz_compressed", "safetensors", "pt"])
def test_probe_reads_shapes_and_rejects_truncation(codec: str, tmp_path: Path) -> None:
    path = tmp_path / f"sample.{codec}"
    data = encode(codec, {"embedding": torch.randn(512, 37)}, {"note": "text meta is not a tensor"})
    path.write_bytes(data)
    assert probe(path, codec) == {"embedding": ([512, 37], "float32")}
    path.write_bytes(data[: len(data) - 7])
    assert probe(path, codec) is None
    assert probe(tmp_path / "missing", codec) is None


def test_probe_rejects_non_sample_files(tmp_path: Path) -> None:
    text = tmp_path / "x.npz"
    text.write_text("not a zip")
    assert probe(text, "npz") is None
    only_text = tmp_path / "y.npz"
    np.savez(only_text, note=np.array("meta only"))
    assert probe(only_text, "npz") is None
    with pytest.raises(ValueError, match="unknown codec"):
        probe(text, "hdf5")
