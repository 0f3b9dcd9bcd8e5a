"""Local-or-S3 storage behind one set of functions, built on :mod:`pyarrow.fs`.

A URI is either a local path (relative paths are resolved against the working directory) or
``s3://bucket/prefix``. S3 is configured from the standard AWS environment:

* ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``); without them the
  AWS SDK's own chain (profiles, instance roles) applies;
* ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` (default ``us-east-1``);
* ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for S3-compatible servers (MinIO, SeaweedFS).

Credentials are handed to pyarrow only; they never appear in messages or reprs.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

S3_PREFIX = "s3://"
DEFAULT_REGION = "us-east-1"
# Ordinary operations: patient enough for big uploads over slow links.
_TIMEOUTS = {"connect_timeout": 10.0, "request_timeout": 60.0}
# check_reachable: answer within seconds, no retries, so that `hyperctl validate` stays fast.
_PROBE_TIMEOUTS = {"connect_timeout": 2.0, "request_timeout": 5.0}
# Ray's own requests (its checkpoint-manager snapshot, checkpoint downloads on restore): the AWS SDK's
# standard retries, exponential backoff up to 20 s each (about a minute against a refused connection).
_RAY_ATTEMPTS = 10
# How long a checkpoint write waits out an unreachable storage by default (the job's storage_retry_s).
DEFAULT_RETRY_S = 150.0
_MAX_DELAY_S = 30.0

T = TypeVar("T")


def wait_delays(budget_s: float) -> tuple[float, ...]:
    """The waits between attempts within ``budget_s`` seconds: 1, 2, 4, 8, 16, 30, 30 ... s, the last
    one shortened so that they add up to the budget (150 s: 1, 2, 4, 8, 16, 30, 30, 30, 29)."""
    delays: list[float] = []
    total, delay = 0.0, 1.0
    while total < budget_s - 1e-9:
        delays.append(min(delay, budget_s - total))
        total += delays[-1]
        delay = min(delay * 2, _MAX_DELAY_S)
    return tuple(delays)


WAIT_DELAYS_S = wait_delays(DEFAULT_RETRY_S)


class StorageError(OSError):
    """A storage URI that is malformed, unreachable or refused; the message is meant for users."""


class StorageUnreachableError(StorageError):
    """The storage stayed unreachable through every retry (:func:`retrying`)."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


def _split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ("bucket", "a/b")."""
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r}: expected s3://BUCKET/PREFIX, found no bucket name")
    return bucket, key.strip("/")


def _check_scheme(uri: str) -> None:
    if not uri:
        raise StorageError("empty URI (expected a local path or s3://bucket/prefix)")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if scheme and scheme.group(1) != "s3":
        raise StorageError(
            f"{uri!r}: unsupported scheme '{scheme.group(1)}://' (expected a local path or s3://bucket/prefix)"
        )


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _has_env_credentials() -> bool:
    return bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))


def _s3_filesystem(timeouts: dict[str, float], retries: int | None = None) -> pafs.S3FileSystem:
    kwargs: dict = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
        **timeouts,
    }
    if _has_env_credentials():
        kwargs.update(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        )
    endpoint = _endpoint()
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(f"AWS endpoint {endpoint!r}: expected http(s)://host[:port]")
        kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    if retries is not None:
        return _RetryingS3FileSystem(retries, **kwargs)
    return pafs.S3FileSystem(**kwargs)


class _RetryingS3FileSystem(pafs.S3FileSystem):
    """An S3FileSystem whose retry strategy survives pickling. pyarrow's own ``__reduce__`` leaves
    ``retry_strategy`` out, so the filesystem Ray ships to its controller and workers would fall back
    to the SDK's default of 3 quick attempts (about a second against a refused connection)."""

    def __init__(self, attempts: int, **kwargs: Any) -> None:
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts), **kwargs)
        self._rebuild = (attempts, kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_retrying, self._rebuild


def _rebuild_retrying(attempts: int, kwargs: dict[str, Any]) -> _RetryingS3FileSystem:
    return _RetryingS3FileSystem(attempts, **kwargs)


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path to use with it (``bucket/key`` for S3)."""
    _check_scheme(uri)
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        return _s3_filesystem(_TIMEOUTS), f"{bucket}/{key}" if key else bucket
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/runs", "x", "y.json")`` -> ``"s3://b/runs/x/y.json"``; local paths use os.path.join."""
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(uri, *parts)


def _describe(uri: str, err: OSError) -> StorageError:
    """A user-facing StorageError for an S3 or filesystem failure at ``uri``."""
    text = str(err)
    if "NETWORK_CONNECTION" in text or "curlCode" in text:
        return StorageError(f"{uri}: cannot reach the S3 endpoint {_endpoint() or '(AWS default)'}: {text}")
    if any(code in text for code in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")):
        hint = (
            ""
            if _has_env_credentials()
            else "; no credentials in the environment (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
        return StorageError(f"{uri}: access denied{hint}: {text}")
    return StorageError(f"{uri}: {text}")


def read_bytes(uri: str) -> bytes:
    """The whole object or file; FileNotFoundError when it does not exist."""
    with open_input(uri) as f:
        try:
            data: bytes = f.readall()
        except OSError as e:
            raise _describe(uri, e) from None
    return data


@contextlib.contextmanager
def open_input(uri: str) -> Iterator[Any]:
    """A file or object opened for reading in a stream (``read(n)``), for files too large to hold;
    FileNotFoundError when it does not exist."""
    fs, path = filesystem_for(uri)
    try:
        f = fs.open_input_stream(path, compression=None)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file or object") from None
    except IsADirectoryError:
        raise StorageError(f"{uri}: is a directory, expected a file") from None
    except OSError as e:
        raise _describe(uri, e) from None
    with f:
        yield f


def size(uri: str) -> int:
    """The size in bytes of a file or object; FileNotFoundError when it does not exist."""
    fs, path = filesystem_for(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such file or object")
    return int(info.size or 0)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old content or the new, never a part.

    Local: a temporary file in the same folder, then ``os.replace``. S3: one upload (objects
    appear only when complete), then a size check, because some servers refuse multipart uploads
    while the client merely logs it.
    """
    fs, path = filesystem_for(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return
    try:
        with fs.open_output_stream(path, compression=None) as f:
            f.write(data)
        info = fs.get_file_info(path)
    except OSError as e:
        raise _describe(uri, e) from None
    if info.type != pafs.FileType.File or info.size != len(data):
        raise StorageError(
            f"{uri}: upload of {len(data)} bytes did not land (found {info.type.name}, "
            f"size {info.size}); check the server's logs and the credentials' permissions"
        )


def exists(uri: str) -> bool:
    fs, path = filesystem_for(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as e:
        raise _describe(uri, e) from None


def list_names(uri: str) -> list[str]:
    """The names in a folder (or under an S3 prefix), sorted; empty when there is nothing there."""
    fs, path = filesystem_for(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as e:
        raise _describe(uri, e) from None
    return sorted(info.base_name for info in infos)


def delete(uri: str) -> None:
    """Delete a file or object if it exists (nothing happens when it does not)."""
    if exists(uri):
        fs, path = filesystem_for(uri)
        try:
            fs.delete_file(path)
        except OSError as e:
            raise _describe(uri, e) from None


def ensure_dir(uri: str) -> None:
    """Make the folder (local). S3 has no folders: only check that the bucket exists."""
    fs, path = filesystem_for(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{uri}: cannot create folder: {e}") from None
        return
    check_reachable(uri)


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_reachable(uri: str, writable: bool = False) -> None:
    """Raise StorageError unless ``uri``'s location can be used (fast: short timeouts, no retries).

    Local: the path is a folder, or can be created as one, and (``writable``) may be written.
    S3: the endpoint answers, the credentials are accepted and the bucket exists; with ``writable``
    a small probe object is written under the prefix and deleted again.
    """
    _check_scheme(uri)
    if not is_s3(uri):
        path = os.path.abspath(os.path.expanduser(uri))
        if os.path.exists(path) and not os.path.isdir(path):
            raise StorageError(f"{uri}: exists and is not a folder")
        base = _nearest_existing(path)
        if not os.path.isdir(base):
            raise StorageError(f"{uri}: cannot be created as a folder: {base} is a file")
        if writable and not os.access(base, os.W_OK | os.X_OK):
            raise StorageError(f"{uri}: not writable ({base} refuses writes for this user)")
        return
    bucket, key = _split_s3(uri)
    fs = _s3_filesystem(_PROBE_TIMEOUTS, retries=1)
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(
                f"{uri}: bucket '{bucket}' does not exist at {_endpoint() or 'the AWS default endpoint'}"
            )
        if writable:
            probe = f"{bucket}/{key}/.write-probe-{os.getpid()}" if key else f"{bucket}/.write-probe-{os.getpid()}"
            with fs.open_output_stream(probe) as f:
                f.write(b"probe")
            fs.delete_file(probe)
    except StorageError:
        raise
    except OSError as e:
        raise _describe(uri, e) from None


def storage_options_for_ray(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig``.

    S3: ``bucket/prefix`` without the scheme plus an S3FileSystem configured like ours (so that
    custom endpoints and credentials reach the Ray workers), whose requests the SDK retries with
    backoff, also on Ray's controller and workers (it survives pickling): Ray's own writes (its
    checkpoint-manager snapshot after each checkpoint) and reads (a restore) ride out a short outage.
    The checkpoint files themselves are uploaded by the worker (``Worker.save_checkpoint``), with
    retries said in lines. Local: the absolute path and None.
    """
    _check_scheme(uri)
    if not is_s3(uri):
        return filesystem_for(uri)[1], None
    bucket, key = _split_s3(uri)
    return f"{bucket}/{key}" if key else bucket, _s3_filesystem(_TIMEOUTS, retries=_RAY_ATTEMPTS)


def retrying(
    action: Callable[[], T],
    uri: str,
    what: str,
    say: Callable[[str], None],
    delays: tuple[float, ...] = WAIT_DELAYS_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``action()``, tried again after each of ``delays`` while it raises OSError (a StorageError, or
    pyarrow's own), each failure said in one line; StorageUnreachableError naming the storage, the
    attempts and the last error when the delays run out. ``what`` is what waits ("checkpoint 40")."""
    for attempt, delay in enumerate((*delays, None), 1):
        try:
            result = action()
        except OSError as e:
            error = e if isinstance(e, StorageError) else _describe(uri, e)
            if delay is None:
                # Ray retries a failed checkpoint upload whose message carries an AWS error code (three
                # more rounds of every delay): this one is final, so its codes are written otherwise.
                last = re.sub(r"AWS Error (\w+)", r"AWS error \1", str(error))
                raise StorageUnreachableError(
                    f"{what}: storage {uri} unreachable after {attempt} attempts over "
                    f"{sum(delays):.0f} s; the previous checkpoint is kept. Last error: {last}"
                ) from None
            say(
                f"[storage] {what}: {uri} unreachable ({error}); "
                f"attempt {attempt} of {len(delays) + 1}, retry in {delay:.0f} s"
            )
            sleep(delay)
            continue
        if attempt > 1:
            say(f"[storage] {uri} reachable again: {what} continues")
        return result
    raise AssertionError("unreachable")  # the loop returns or raises


def wait_reachable(
    uri: str,
    what: str,
    say: Callable[[str], None],
    delays: tuple[float, ...] = WAIT_DELAYS_S,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once ``uri`` can be written (:func:`check_reachable`), waiting with growing delays
    while it cannot, each wait said in one line (:func:`retrying`)."""
    retrying(lambda: check_reachable(uri, writable=True), uri, what, say, delays, sleep)


__all__ = [
    "DEFAULT_RETRY_S",
    "StorageError",
    "StorageUnreachableError",
    "check_reachable",
    "delete",
    "ensure_dir",
    "exists",
    "filesystem_for",
    "is_s3",
    "join",
    "open_input",
    "read_bytes",
    "retrying",
    "size",
    "storage_options_for_ray",
    "wait_delays",
    "wait_reachable",
    "write_bytes_atomic",
]
