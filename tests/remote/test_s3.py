"""Object storage end to end against a real S3-compatible server on loopback (moto's server mode, as s3fs's own
tests use): a manifest and its media on s3://, a predict run reading them, exports to s3:// in every format read
back by the streaming readers, and bad remote input named by its URL."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from unittest import mock

import pytest

from lit_features.export.run import export_store
from lit_features.remote import RemoteAccessError
from lit_features.store.reader import FeatureStore
from tests.conftest import MEDIA, REPO_ROOT, run_cli
from tests.export.export_helpers import FORMATS, assert_same_as_store, read_export, same_bits

CONFIG = str(REPO_ROOT / "configs" / "quickstart.yaml")
LAYOUT = {"clips/realshort.mp4": "realshort.mp4", "images/chelsea.jpg": "chelsea.jpg", "images/a.png": "astronaut.png"}
ENTRIES = [{"path": rel} for rel in LAYOUT] + [{"path": "clips/missing.mp4"}]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the standard AWS variables pointing every client (s3fs, boto3) at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
    }
    with mock.patch.dict(os.environ, env):
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        yield fs
        fs.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="module")
def remote_run(s3, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same dataset in a bucket (read by the CLI) and on disk (read in-process): two stores."""
    s3.mkdir("data")
    for rel, name in LAYOUT.items():
        s3.put_file(str(MEDIA / name), f"data/{rel}")
    s3.pipe_file("data/manifest.json", json.dumps(ENTRIES).encode())
    folder = tmp_path_factory.mktemp("remote_run")
    model = ["--model.init_args.model_path", str(tiny_models / "siglip-so400m-patch14-384")]
    run_cli(
        ["predict", "--config", CONFIG, *model, "--data.init_args.manifest", "s3://data/manifest.json"]
        + ["--data.init_args.num_workers", "1", "--writer.output_dir", str(folder / "from_s3")],
        OMP_NUM_THREADS="1",
    )
    local = folder / "local"
    for rel, name in LAYOUT.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(MEDIA / name, local / rel)
    (local / "manifest.json").write_text(json.dumps(ENTRIES))
    run_cli(
        ["predict", "--config", CONFIG, *model, "--data.init_args.manifest", str(local / "manifest.json")]
        + ["--data.init_args.num_workers", "0", "--writer.output_dir", str(folder / "from_disk")],
        OMP_NUM_THREADS="1",
    )
    return {"from_s3": folder / "from_s3", "from_disk": folder / "from_disk"}


def test_predict_reads_manifest_and_media_from_s3(remote_run) -> None:
    remote, local = FeatureStore(remote_run["from_s3"]), FeatureStore(remote_run["from_disk"])
    # keys come from the path relative to the manifest's folder, in a bucket as on a disk
    assert remote.keys() == local.keys() == ["clips__realshort_mp4", "images__a_png", "images__chelsea_jpg"]
    assert sorted(remote.row(k)["source"] for k in remote.keys()) == sorted(f"s3://data/{rel}" for rel in LAYOUT)
    for key in remote.keys():
        assert same_bits(remote[key]["features"], local[key]["features"]), key  # same bytes decoded
    failed = {row["key"]: row for row in remote.failures()}
    assert list(failed) == ["clips__missing_mp4"]  # a missing object costs its sample; the run went on
    assert failed["clips__missing_mp4"]["stage"] == "fetch"
    assert "s3://data/clips/missing.mp4: no such object" in failed["clips__missing_mp4"]["message"]


@pytest.mark.parametrize("format", FORMATS)
def test_export_to_s3_reads_back_byte_for_byte(s3, remote_run, format: str, tmp_path: Path) -> None:
    store = FeatureStore(remote_run["from_s3"])
    url = f"s3://exports/{format}"
    if not s3.exists("exports"):
        s3.mkdir("exports")
    summary = export_store(str(store.root), format, url, shard_bytes=4_000_000)
    assert summary["added"] == len(store) and summary["output"] == url
    assert json.loads(s3.cat_file(f"exports/{format}/_lit_features_export.json"))["fingerprint"] == store.fingerprint
    assert_same_as_store(read_export(url, format, tmp_path / "cache"), store)
    assert export_store(str(store.root), format, url)["added"] == 0  # incremental: nothing new


def test_export_command_to_s3_and_its_one_line_errors(s3, remote_run, tmp_path: Path) -> None:
    store = str(remote_run["from_s3"])
    s3.mkdir("cli")
    proc = run_cli(["export", store, "--format", "parquet", "--output", "s3://cli/features"])
    assert "exported 3 new sample(s) to s3://cli/features (parquet)" in proc.stdout
    again = run_cli(["export", store, "--format", "parquet", "--output", "s3://cli/features"])
    assert "up to date (3 sample(s) exported" in again.stdout
    bad = run_cli(["export", store, "--format", "webdataset", "--output", "s3://no-such-bucket/x"], check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "lit_features: error: s3://no-such-bucket/x: no such object (or its bucket does not exist); check the URL"
    )
    with pytest.raises(RemoteAccessError, match="s3://no-such-bucket/x: no such object"):
        export_store(store, "litdata", "s3://no-such-bucket/x")
    no_credentials = run_cli(
        ["export", store, "--format", "parquet", "--output", "s3://cli/other"],
        check=False,
        AWS_ACCESS_KEY_ID="",
        AWS_SECRET_ACCESS_KEY="",
    )
    assert no_credentials.returncode == 2
    assert (
        no_credentials.stderr.strip()
        .splitlines()[-1]
        .startswith("lit_features: error: s3://cli/other: no credentials found to access it")
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("env", "url", "message"),
    [
        ({}, "s3://no-such-bucket/manifest.json", "no such object (or its bucket does not exist)"),
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "s3://data/manifest.json", "no credentials found"),
        (
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"},
            "s3://data/manifest.json",
            "cannot reach the storage endpoint",
        ),
    ],
    ids=["missing-bucket", "no-credentials", "unreachable"],
)
def test_a_bad_remote_manifest_stops_before_any_model_loads(s3, tiny_models, env, url, message, tmp_path) -> None:
    env = {k: v.format(port=_closed_port()) for k, v in env.items()}
    model = ["--model.init_args.model_path", str(tiny_models / "siglip-so400m-patch14-384")]
    proc = run_cli(
        ["predict", "--config", CONFIG, *model, "--data.init_args.manifest", url]
        + ["--writer.output_dir", str(tmp_path / "out")],
        check=False,
        AWS_MAX_ATTEMPTS="1",
        **env,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lit_features: error: {url}: {message}"), last
    assert "Traceback" not in proc.stderr
    assert "STAND-IN weights" not in proc.stderr  # the model's weights were never loaded
    assert not (tmp_path / "out" / "store.json").exists()


def test_keys_of_remote_sources_are_stable_and_filesystem_safe() -> None:
    from lit_features.data.manifest import RawEntry, build_samples
    from lit_features.data.remote import RemotePath

    root = RemotePath("s3://bucket/datasets/v1")
    raw = [
        RawEntry({"path": "clips/a b?.mp4"}, root, root, 0),
        RawEntry({"path": "s3://other/deep/x/clip.mp4"}, root, root, 1),  # outside the root: last two parts
        RawEntry({"path": "https://host/v/a.mp4?X-Amz-Signature=1&X-Amz-Date=2"}, root, root, 2),
        RawEntry({"path": "clips/a.mp4", "cut": [0, 8]}, root, root, 3),
    ]
    samples = build_samples(raw)
    assert [s.key for s in samples] == ["clips__a_b_mp4", "x__clip_mp4", "v__a_mp4", "clips__a_mp4_cut0-8"]
    resigned = RawEntry({"path": "https://host/v/a.mp4?X-Amz-Signature=9&X-Amz-Date=3"}, root, root, 2)
    assert build_samples([resigned])[0].key == "v__a_mp4"  # a presigned URL signed again keeps its key
    assert samples[2].source.endswith("?X-Amz-Signature=1&X-Amz-Date=2")  # but is fetched as given
    assert [s.source for s in samples][:2] == ["s3://bucket/datasets/v1/clips/a b?.mp4", "s3://other/deep/x/clip.mp4"]
    assert build_samples(raw)[0].key == samples[0].key  # the same entries give the same keys every time
