"""URL handling shared by manifests, media and exports: protocols, joining, parents, and what an error says."""

from __future__ import annotations

import importlib.util

import pytest

from lit_features import remote


def test_protocols_join_and_parent() -> None:
    assert [remote.protocol(p) for p in ("s3://b/k", "/data/x", "file:///x", "hf://datasets/a/b", "x/s3://y")] == [
        "s3",
        "file",
        "file",
        "hf",
        "file",
    ]
    assert remote.join("s3://bucket/data", "clips/../v/a.mp4") == "s3://bucket/data/v/a.mp4"
    assert remote.join("s3://bucket/data", "https://host/a.mp4") == "https://host/a.mp4"
    assert remote.join("/local/data", "clips/a.mp4") == "/local/data/clips/a.mp4"
    assert remote.parent("s3://bucket/data/meta.json") == "s3://bucket/data"


def test_errors_say_what_went_wrong_and_what_to_do() -> None:
    class NoCredentialsError(Exception):  # botocore's name, as fsspec implementations raise it
        pass

    class EndpointConnectionError(Exception):
        pass

    url = "s3://bucket/meta.json"
    assert remote.describe(url, FileNotFoundError("x")).startswith("no such object")
    assert "set AWS_ACCESS_KEY_ID" in remote.describe(url, NoCredentialsError("Unable to locate credentials"))
    assert "HF_TOKEN" in remote.describe("hf://datasets/a/b.json", NoCredentialsError("no token"))
    assert remote.describe(url, EndpointConnectionError("refused")).startswith("cannot reach the storage endpoint")
    assert remote.describe(url, PermissionError("403")).startswith("access denied")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed here")
def test_a_missing_implementation_says_what_to_install() -> None:
    with pytest.raises(remote.RemoteAccessError, match=r"gs://b/x.json: gs:// needs .*pip install gcsfs"):
        remote.read_bytes("gs://b/x.json")
