"""The prepared-data cache every task's preparation shares.

A task prepares its data once into ``<storage>/datasets/<name>-<hash16>/``: Parquet splits plus a
JSON manifest. The hash covers the sources and the settings, so a changed corpus or setting gets
a new folder and an unchanged one is reused. Every file is written atomically and the manifest
last: it is the commit marker, and a folder without it is incomplete and gets rebuilt, so
concurrent preparers of the same data cannot corrupt each other.
"""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..spec.errors import JobSpecError
from . import storage


def data_error(field: str, message: str) -> JobSpecError:
    """A problem with a job's data, naming the spec field (and, in ``message``, the file)."""
    return JobSpecError("data", [f"{field}: {message}"])


def read_data_file(field: str, uri: str) -> bytes:
    """The bytes of a data file named by spec ``field``, gunzipped when gzip'd (by content, not name)."""
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        raise data_error(field, f"expected a file, found nothing at {uri}") from None
    except OSError as e:
        raise data_error(field, f"cannot read {uri}: {e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise data_error(field, f"{uri} looks gzip'd but does not decompress: {e}") from None
    return raw


def prepared_folder(cache_root: str, name: str, content_hash: str) -> str:
    """The cache folder of a data set: ``<cache_root>/<name>-<first 16 hex digits of the hash>``."""
    return storage.join(cache_root, f"{name}-{content_hash[:16]}")


def is_complete(root: str, manifest: str) -> bool:
    """Whether a prepared folder was finished (its manifest, written last, exists)."""
    return storage.exists(storage.join(root, manifest))


def write_manifest(root: str, manifest: str, meta: dict[str, Any]) -> None:
    """Write the manifest: call it last, after every other file of the folder."""
    storage.write_bytes_atomic(storage.join(root, manifest), json.dumps(meta, indent=1).encode())


def read_manifest(root: str, name: str, version: int, what: str) -> dict[str, Any]:
    """The JSON manifest ``name`` of a prepared folder (any task), checked for its schema version."""
    try:
        meta: dict[str, Any] = json.loads(storage.read_bytes(storage.join(root, name)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{root}: not a prepared {what} folder (no {name})") from None
    if meta.get("schema_version") != version:
        raise ValueError(
            f"{root}: prepared with schema version {meta.get('schema_version')}, "
            f"this code reads version {version}; prepare the data again"
        )
    return meta


def write_parquet(uri: str, table: pa.Table) -> None:
    """One split as a zstd-compressed Parquet file, written atomically."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes_atomic(uri, sink.getvalue())


def read_parquet(uri: str) -> pa.Table:
    """A Parquet file as a table; FileNotFoundError when it does not exist."""
    return pq.read_table(pa.BufferReader(storage.read_bytes(uri)))


__all__ = [
    "data_error",
    "is_complete",
    "prepared_folder",
    "read_data_file",
    "read_manifest",
    "read_parquet",
    "write_manifest",
    "write_parquet",
]
