"""Paths and URLs read or written through fsspec (``s3://``, ``gs://``, ``hf://``, ``https://`` or local files).

Credentials and endpoints come from each storage library's own configuration (for S3: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for an S3-compatible server; fsspec's
``FSSPEC_<PROTOCOL>`` variables or ``~/.config/fsspec/*.json`` for anything else). Every storage error becomes
one :class:`RemoteAccessError` naming the URL, what went wrong and what to do.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from lit_features.errors import UserError

# How to install the fsspec implementation of each protocol, for the "install this" message.
INSTALL_HINTS = {
    "s3": "pip install 'lit_features[remote]' (s3fs)",
    "s3a": "pip install 'lit_features[remote]' (s3fs)",
    "gs": "pip install gcsfs",
    "gcs": "pip install gcsfs",
    "http": "pip install aiohttp",
    "https": "pip install aiohttp",
}
_CREDENTIAL_ERRORS = {
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "NoAuthTokenError",
    "DefaultCredentialsError",
    "RefreshError",
}
_CONNECTION_ERRORS = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ConnectionError",
    "gaierror",
    "TimeoutError",
}
_CREDENTIAL_HINT = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`",
    "hf": "set HF_TOKEN or run `huggingface-cli login`",
}


class RemoteAccessError(UserError, OSError):
    """Reading or writing a URL failed; the message names the URL, the cause and the fix."""

    def __init__(self, url: str, message: str):
        super().__init__(f"{url}: {message}")
        self.url = url


def protocol(path: str | os.PathLike) -> str:
    """``s3``, ``gs``, ``hf``, ``https``, ... for a URL; ``file`` for a local path or ``file://`` URL."""
    text = os.fspath(path)
    head, sep, _ = text.partition("://")
    if not sep or "/" in head or not head:
        return "file"
    return head.split("::")[-1].lower()


def is_remote(path: str | os.PathLike | None) -> bool:
    """True for a URL fsspec must open (anything with a protocol other than a local file)."""
    return path is not None and protocol(path) not in ("file", "local")


def join(base: str, relative: str) -> str:
    """``relative`` resolved against the folder URL or path ``base`` (an absolute URL or path is kept)."""
    if is_remote(relative) or os.path.isabs(relative):
        return relative
    if not is_remote(base):
        return os.path.normpath(os.path.join(base, relative))
    head, _, rest = base.partition("://")
    joined = posixpath.normpath(posixpath.join("/" + rest, relative)).lstrip("/")
    return f"{head}://{joined}"


def parent(url: str) -> str:
    """The folder that holds ``url`` (a URL or a local path)."""
    if not is_remote(url):
        return os.path.dirname(os.path.abspath(url))
    head, _, rest = url.partition("://")
    return f"{head}://{posixpath.dirname(rest.rstrip('/'))}"


def describe(url: str, err: BaseException) -> str:
    """What a storage exception means for ``url``, and what to do about it, in one line."""
    names = {cls.__name__ for cls in type(err).__mro__}
    proto = protocol(url)
    detail = " ".join(str(err).split())[:300]
    if names & _CREDENTIAL_ERRORS:
        hint = _CREDENTIAL_HINT.get(proto, "configure credentials for this storage")
        return f"no credentials found to access it ({detail}); {hint}"
    if isinstance(err, FileNotFoundError):
        return "no such object (or its bucket does not exist); check the URL"
    if isinstance(err, PermissionError):
        return f"access denied ({detail}); check the credentials' permissions on this bucket/path"
    if names & _CONNECTION_ERRORS or isinstance(err, (ConnectionError, TimeoutError)):
        return (
            f"cannot reach the storage endpoint ({detail}); check the network and the endpoint "
            "(for S3-compatible servers: AWS_ENDPOINT_URL)"
        )
    return f"{type(err).__name__}: {detail}"


def remote_error(url: str, err: BaseException) -> RemoteAccessError:
    """``err`` (raised while accessing ``url``) as a :class:`RemoteAccessError`."""
    if isinstance(err, RemoteAccessError):
        return err
    return RemoteAccessError(url, describe(url, err))


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for ``url``; a missing implementation is a one-line error."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as err:
        hint = INSTALL_HINTS.get(protocol(url), "install the fsspec implementation of this protocol")
        raise RemoteAccessError(
            url, f"{protocol(url)}:// needs a package that is not installed: {hint} ({err})"
        ) from None
    except ValueError as err:  # unknown protocol
        raise RemoteAccessError(url, f"{err}") from None


@contextmanager
def open_url(url: str, mode: str = "rb", storage_options: dict[str, Any] | None = None) -> Iterator[IO]:
    """Open a URL or local path for reading or writing; errors while opening become :class:`RemoteAccessError`."""
    fs, path = filesystem(url, storage_options)
    try:
        handle = fs.open(path, mode)
    except Exception as err:
        raise remote_error(url, err) from err
    with handle:
        yield handle


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole content of ``url``."""
    fs, path = filesystem(url, storage_options)
    try:
        return fs.cat_file(path)
    except Exception as err:
        raise remote_error(url, err) from err


def read_text(url: str, storage_options: dict[str, Any] | None = None) -> str:
    return read_bytes(url, storage_options).decode("utf-8")


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` is a file or a folder; unlike fsspec's ``exists``, missing credentials or an unreachable
    endpoint raise (naming the URL) instead of answering False."""
    fs, path = filesystem(url, storage_options)
    try:
        fs.info(path)
        return True
    except FileNotFoundError:
        return False
    except Exception as err:
        raise remote_error(url, err) from err


def is_dir(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    try:
        return fs.isdir(path)
    except Exception as err:
        raise remote_error(url, err) from err


def list_files(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every file below the folder ``url``, as full URLs, sorted."""
    fs, path = filesystem(url, storage_options)
    try:
        found = fs.find(path)
    except Exception as err:
        raise remote_error(url, err) from err
    return sorted(fs.unstrip_protocol(p) if is_remote(url) else p for p in found)


def download(url: str, local_path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> int:
    """Copy ``url`` to ``local_path`` through a temporary name (a cut download never looks complete); bytes."""
    fs, path = filesystem(url, storage_options)
    local_path = os.fspath(local_path)
    tmp = f"{local_path}.{os.getpid()}.{os.urandom(4).hex()}.part"
    try:
        fs.get_file(path, tmp)
        os.replace(tmp, local_path)
    except Exception as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise remote_error(url, err) from err
    return os.path.getsize(local_path)
