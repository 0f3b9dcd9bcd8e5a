"""Checks of a validated spec against the world: files, URIs, cluster resources.

``check_job`` raises JobSpecError naming the field, what was expected and what was found. It is
fast (short network timeouts, no Ray) and writes nothing, so ``hyperctl validate`` can run it.
"""

from __future__ import annotations

import codecs
import os
import re
import zlib

import pyarrow.fs as pafs

from ..io import storage, tracking
from ..spec.errors import JobSpecError
from ..spec.schema import JobSpec
from ..tasks import task_of

# How much of each corpus is decoded up front: enough to catch a binary or gzipped file early
# without reading a large corpus twice (the task's preparation decodes the whole of it).
_SNIFF_BYTES = 64 * 1024
_TRACKING_FORMS = "null (a sqlite store under storage), sqlite:////absolute/path.db or http(s)://host[:port]"


def _check_corpus(field: str, uri: str, text: bool = True) -> str | None:
    """A problem line for a data file that is missing, empty, unreadable or (``text``) not UTF-8, else None."""
    what = "a UTF-8 text file" if text else "a file"
    try:
        if storage.is_s3(uri):
            storage.check_reachable(uri)  # fast, and names a missing bucket, dead endpoint or refused credentials
        fs, path = storage.filesystem_for(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return f"{field}: expected {what}, found nothing at {uri}"
        if info.type != pafs.FileType.File:
            return f"{field}: expected {what}, found a folder at {uri}"
        if info.size == 0:
            return f"{field}: expected {'UTF-8 text' if text else 'data'}, found an empty file at {uri}"
        if not text:
            return None
        with fs.open_input_stream(path, compression=None) as f:
            head = f.read(_SNIFF_BYTES)
    except storage.StorageError as e:
        return f"{field}: expected a readable text file, found a problem: {e}"
    except OSError as e:
        return f"{field}: expected a readable text file, found a problem: {uri}: {e}"
    gzipped = head[:2] == b"\x1f\x8b"
    if gzipped:  # its text is checked: what the head decompresses to
        try:
            head = zlib.decompressobj(wbits=31).decompress(head)
        except zlib.error as e:
            return f"{field}: expected gzip'd UTF-8 text, found corrupt gzip data at the start of {uri}: {e}"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        return (
            f"{field}: expected UTF-8 text, found byte 0x{head[e.start]:02x} at offset {e.start} of {uri}"
            f"{' (uncompressed)' if gzipped else ''} that is not valid UTF-8 (a binary or compressed file?)"
        )
    return None


def _check_storage(uri: str, probe_write: bool) -> str | None:
    # A local folder's permissions can be read without writing; S3's can only be tried.
    writable = probe_write if storage.is_s3(uri) else True
    try:
        storage.check_reachable(uri, writable=writable)
    except storage.StorageError as e:
        return f"storage: expected a writable local folder or s3://bucket/prefix, found a problem: {e}"
    return None


def _check_tracking(uri: str | None) -> str | None:
    if uri is None or re.match(r"^https?://[^/\s]+", uri):
        return None
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if not path.startswith("/"):
            return (
                f"tracking.uri: expected an absolute sqlite path (sqlite:////absolute/path.db, four slashes), "
                f"found the relative {uri!r}: it would depend on the directory each process starts in"
            )
        return None
    if uri.startswith(("file:", "/", ".", "~")):
        return (
            f"tracking.uri: expected {_TRACKING_FORMS}, found the file store {uri!r}, "
            "which MLflow 3 no longer supports; use a sqlite:////...db URI instead"
        )
    return f"tracking.uri: expected {_TRACKING_FORMS}, found {uri!r}"


def local_ray_cpus() -> float:
    """The CPUs a new local Ray instance will offer: Ray's own count, which honours a container's
    CPU quota; ``os.cpu_count()`` when that private API is missing."""
    try:
        from ray._private.utils import get_num_cpus  # deferred: Ray takes seconds to import

        return float(get_num_cpus())
    except Exception:  # noqa: BLE001 - a private API; the plain count is the fallback
        return float(os.cpu_count() or 1)


def _available_gpus() -> int:
    import torch  # deferred: a job that asks for no GPU needs no torch here

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check_resources(spec: JobSpec, available_cpus: float | None, available_gpus: float | None) -> list[str]:
    r, problems = spec.resources, []
    cpus = (os.cpu_count() or 1) if available_cpus is None else available_cpus
    if r.workers * r.cpus_per_worker > cpus:
        problems.append(
            f"resources: expected workers x cpus_per_worker <= {cpus:g} CPUs available, "
            f"found {r.workers} x {r.cpus_per_worker:g} = {r.workers * r.cpus_per_worker:g}"
        )
    if r.gpus_per_worker > 0:
        gpus = _available_gpus() if available_gpus is None else available_gpus
        if gpus == 0:
            problems.append(
                f"resources.gpus_per_worker: expected 0 on a machine without GPUs "
                f"(torch.cuda.is_available() is false), found {r.gpus_per_worker:g}"
            )
        elif r.workers * r.gpus_per_worker > gpus:
            problems.append(
                f"resources: expected workers x gpus_per_worker <= {gpus:g} GPUs available, "
                f"found {r.workers} x {r.gpus_per_worker:g} = {r.workers * r.gpus_per_worker:g}"
            )
    return problems


def _cluster_need(spec: JobSpec) -> dict[str, tuple[float, str]]:
    r = spec.resources
    need = {"CPU": (r.workers * r.cpus_per_worker, f"{r.workers} x {r.cpus_per_worker:g}")}
    if r.gpus_per_worker > 0:
        need["GPU"] = (r.workers * r.gpus_per_worker, f"{r.workers} x {r.gpus_per_worker:g}")
    return need


def check_cluster_resources(
    spec: JobSpec, current: dict[str, float], maximum: dict[str, float] | None = None
) -> list[str]:
    """Resources of a job running on a Ray cluster (``hyperctl run`` with an address).

    CPUs and GPUs may appear only after the autoscaler adds nodes, so a shortfall against the
    cluster's ``current`` totals is returned as a warning, not an error. When the autoscaler's
    limits are known (``maximum``, from :func:`cluster_max_resources`) a job that exceeds them can
    never be placed: JobSpecError.
    """
    problems, warnings = [], []
    for key, (need, how) in _cluster_need(spec).items():
        field = "cpus_per_worker" if key == "CPU" else "gpus_per_worker"
        have = float(current.get(key, 0.0))
        if maximum is not None and need > float(maximum.get(key, 0.0)):
            problems.append(
                f"resources: expected workers x {field} <= {float(maximum.get(key, 0.0)):g} {key}s, "
                f"the most this cluster's autoscaler can provide, found {how} = {need:g}"
            )
        elif need > have:
            later = (
                "the autoscaler can add them"
                if maximum is not None
                else "no autoscaler limits are known: training waits until nodes with them join"
            )
            warnings.append(f"resources: the job needs {how} = {need:g} {key}s, the cluster has {have:g} now; {later}")
    if problems:
        raise JobSpecError(f"job {spec.name!r}", problems)
    return warnings


def cluster_max_resources() -> dict[str, float] | None:
    """The most of each resource the connected cluster's autoscaler can provide, or None when no
    autoscaler has published its configuration (a fixed cluster). Needs ``ray.init`` first."""
    try:
        from ray._private.state import state  # deferred: only a connected driver calls this

        found = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a private API; without it the check only warns
        return None
    return {k: float(v) for k, v in found.items()} if found else None


def check_job(
    spec: JobSpec,
    available_cpus: float | None = None,
    available_gpus: float | None = None,
    *,
    probe_write: bool = False,
    source: str | None = None,
    check_resources: bool = True,
) -> None:
    """Raise JobSpecError listing every problem only the environment can reveal.

    ``available_cpus`` / ``available_gpus``: the local Ray instance's totals when the caller knows
    them; by default this machine's (os.cpu_count(), torch.cuda). ``check_resources=False`` skips
    them: a job for a cluster is checked there (:func:`check_cluster_resources`), not against the
    machine that submits it. Local storage is checked for write permission without writing; S3
    storage only for endpoint, credentials and bucket, unless ``probe_write`` puts (and deletes) a
    small probe object there. ``source`` names the job in the error (default: the job's name).
    """
    found = [_check_corpus(f.field, f.uri, f.text) for f in task_of(spec).data_files(spec)]
    found += [_check_storage(spec.storage, probe_write), _check_tracking(spec.tracking.uri)]
    found.append(tracking.spec_conflict(spec, task_of(spec).aliases))
    problems = [p for p in found if p]
    if check_resources:
        problems += _check_resources(spec, available_cpus, available_gpus)
    if problems:
        raise JobSpecError(source or f"job {spec.name!r}", problems)
