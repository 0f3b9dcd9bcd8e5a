"""Sharded prepared data: a split as several Parquet files listed in the folder's manifest, read by
row ranges or row groups without loading the split, and prepared in parallel on Ray Data.

Any task's preparation can use it; the task decides what a row is (a symbol id, a sentence pair).

**Layout.** A split ``s`` of a prepared folder is the files ``s-00000.parquet``, ``s-00001.parquet``
... in order; the rows of the split are the rows of its files one after another. Each file is
written by :func:`write_shard` (zstd, row groups of ``rows_per_group`` rows, the last one shorter),
atomically, and is described by a :class:`ShardInfo` (its name and row count). A split is a
:class:`SplitShards` (the list of its shards), stored in the manifest as ``SplitShards.to_json()``.

**Row groups.** :data:`ROWS_PER_GROUP` (32,768 rows) is the default: for the char LM's int32 ids a
group is 128 KiB before compression, so a reader of a row range ``[start, stop)`` decompresses at
most 2 x 128 KiB beyond the range, whatever the split's size; a Parquet footer costs about 100
bytes per group. Tasks with bigger rows (sentence pairs) pick fewer rows per group.

**Commit marker last.** :func:`commit` writes the manifest after every shard: a folder without it is
incomplete (a preparer died, or is still working) and :func:`start_fresh` empties it before a new
preparation. The content-hash cache (:func:`service.io.datacache.prepared_folder`) names the folder.

**Reading.** :class:`ShardedSplit` opens the files lazily (local or ``s3://``, random access through
:mod:`pyarrow.fs`), reads only the row groups that cover a requested range (:meth:`ShardedSplit.read`),
or one row group at a time (:meth:`ShardedSplit.read_group`, for readers that deal row groups out to
workers: :func:`epoch_order` gives a reproducible order per epoch).

**Parallel preparation.** :func:`parallel_map` runs a picklable function over a list of work items on
Ray Data (``ray.data.from_items(items).map_batches(fn)``, one item per task, the cluster's CPUs) when
asked, else in this process; the results come back in the items' order, so both ways write the same
bytes when the function writes the shards (the task's shards are then written by its own map
function through :func:`write_shard`, not by ``Dataset.write_parquet``, whose file names and row
groups follow Ray's blocks). ``progress`` is called after each finished item.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import datacache, storage

ROWS_PER_GROUP = 32_768
COMPRESSION = "zstd"
READ_BLOCK = 8 << 20  # bytes per read when hashing or copying a source

T = TypeVar("T")
R = TypeVar("R")


def shard_name(split: str, index: int) -> str:
    """``train-00003.parquet``: the file of shard ``index`` of ``split``."""
    return f"{split}-{index:05d}.parquet"


@dataclass(frozen=True)
class ShardInfo:
    """One Parquet file of a split: its name in the prepared folder and its number of rows."""

    name: str
    rows: int


@dataclass(frozen=True)
class SplitShards:
    """A split: its shards in order (the split's rows are theirs one after another)."""

    shards: tuple[ShardInfo, ...]
    rows_per_group: int = ROWS_PER_GROUP

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.num_rows,
            "rows_per_group": self.rows_per_group,
            "files": [[s.name, s.rows] for s in self.shards],
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> SplitShards:
        return cls(tuple(ShardInfo(str(n), int(r)) for n, r in meta["files"]), int(meta["rows_per_group"]))


def write_shard(root: str, name: str, table: pa.Table, rows_per_group: int = ROWS_PER_GROUP) -> ShardInfo:
    """Write ``table`` as ``root/name`` (zstd, row groups of ``rows_per_group`` rows), atomically.

    The bytes depend only on the table and the settings (and pyarrow's version), so any process
    writing the same table writes the same file. Memory: the file is assembled in memory before its
    atomic upload, so a task keeps its shards to a size it can hold (tens of MB)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=COMPRESSION, row_group_size=rows_per_group)
    storage.write_bytes_atomic(storage.join(root, name), sink.getvalue())
    return ShardInfo(name, table.num_rows)


class ShardedSplit:
    """Random access to the rows of a sharded split (local or ``s3://``).

    Only the Parquet footers (opened on first use) and the row groups a call touches are read; the
    memory held between calls is the footers of the files touched so far and the last
    ``cache_groups`` row groups read (none by default; a reader that comes back to the same groups,
    such as a char LM's streams reading window after window, keeps one or two per stream)."""

    def __init__(
        self, root: str, split: SplitShards, columns: Sequence[str] | None = None, cache_groups: int = 0
    ) -> None:
        self.root = root
        self.cache_groups = cache_groups
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self.split = split
        self.columns = list(columns) if columns is not None else None
        self.starts = np.cumsum([0] + [s.rows for s in split.shards]).tolist()  # first row of each shard
        self._files: dict[int, pq.ParquetFile] = {}
        self._group_starts: dict[int, list[int]] = {}

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    def _file(self, i: int) -> pq.ParquetFile:
        if i not in self._files:
            fs, path = storage.filesystem_for(storage.join(self.root, self.split.shards[i].name))
            try:
                f = pq.ParquetFile(fs.open_input_file(path))
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{self.root}: shard {self.split.shards[i].name} listed in the manifest is missing; "
                    "prepare the data again (delete the folder)"
                ) from None
            if f.metadata.num_rows != self.split.shards[i].rows:
                raise ValueError(
                    f"{self.root}: shard {self.split.shards[i].name} has {f.metadata.num_rows} rows, "
                    f"the manifest says {self.split.shards[i].rows}; prepare the data again (delete the folder)"
                )
            self._files[i] = f
            sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
            self._group_starts[i] = np.cumsum([0, *sizes]).tolist()
        return self._files[i]

    def close(self) -> None:
        """Forget the files opened so far (their footers and read buffers, about 1 MB each): a reader
        that visits every shard once an epoch calls it after each, so that what it holds does not
        grow with the number of shards. A later read opens its files again."""
        self._files.clear()
        self._group_starts.clear()

    def read(self, start: int, stop: int) -> pa.Table:
        """Rows ``[start, stop)`` of the split (clipped to it), reading only the row groups that hold them."""
        start, stop = max(0, start), min(stop, self.num_rows)
        parts: list[pa.Table] = []
        if start < stop:
            first = int(np.searchsorted(self.starts, start, side="right")) - 1
            for i in range(first, len(self.split.shards)):
                lo = self.starts[i]
                if lo >= stop:
                    break
                a, b = max(start, lo) - lo, min(stop, self.starts[i + 1]) - lo  # rows of file i
                if a >= b:
                    continue
                self._file(i)
                g0 = self._group_starts[i]
                for g in range(int(np.searchsorted(g0, a, side="right")) - 1, int(np.searchsorted(g0, b))):
                    lo_g = max(a, g0[g]) - g0[g]
                    parts.append(self.read_group(i, g).slice(lo_g, min(b, g0[g + 1]) - g0[g] - lo_g))
        if not parts:
            return self._empty()
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def _empty(self) -> pa.Table:
        f = self._file(0) if self.split.shards else None
        schema = f.schema_arrow if f is not None else pa.schema([])
        if self.columns is not None:
            schema = pa.schema([schema.field(c) for c in self.columns])
        return schema.empty_table()

    def groups(self) -> list[tuple[int, int]]:
        """Every row group of the split as ``(shard index, group index)``, in row order."""
        out: list[tuple[int, int]] = []
        for i, shard in enumerate(self.split.shards):
            n = math.ceil(shard.rows / self.split.rows_per_group)
            out.extend((i, g) for g in range(n))
        return out

    def read_group(self, shard: int, group: int) -> pa.Table:
        """One row group (see :meth:`groups`), from the cache of the last ``cache_groups`` read."""
        key = (shard, group)
        table = self._cache.get(key)
        if table is None:
            table = self._file(shard).read_row_group(group, columns=self.columns)
            if self.cache_groups:
                self._cache[key] = table
                while len(self._cache) > self.cache_groups:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return table


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch)``: the order in which a
    reader visits row groups (or batches) in that epoch, the same on every worker and after a resume."""
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n)]


def start_fresh(root: str, manifest: str) -> None:
    """Before preparing into ``root``: delete what an unfinished preparation left there (a folder
    without its manifest). Never touches a committed folder."""
    if datacache.is_complete(root, manifest):
        raise ValueError(f"{root} is complete (it has {manifest}); refusing to empty it")
    for name in storage.list_names(root):
        storage.delete(storage.join(root, name))


def commit(root: str, manifest: str, meta: dict[str, Any]) -> None:
    """Write the manifest, the commit marker: call it after every shard of the folder is written."""
    datacache.write_manifest(root, manifest, meta)


def hash_uri(h: Any, uri: str, field_name: str, expected: str = "a file") -> int:
    """Feed the bytes of ``uri`` to the hash ``h`` in blocks (memory independent of the file's size);
    the file's size. A missing file is a JobSpecError naming ``field_name`` and what was ``expected``."""
    fs, path = storage.filesystem_for(uri)
    size = 0
    try:
        with fs.open_input_stream(path, compression=None) as f:
            while block := f.read(READ_BLOCK):
                h.update(block)
                size += len(block)
    except FileNotFoundError:
        raise datacache.data_error(field_name, f"expected {expected}, found nothing at {uri}") from None
    except IsADirectoryError:
        raise datacache.data_error(field_name, f"expected a file, found a folder at {uri}") from None
    except OSError as e:
        raise datacache.data_error(field_name, f"cannot read {uri}: {e}") from None
    return size


def file_size(uri: str) -> int:
    fs, path = storage.filesystem_for(uri)
    return int(fs.get_file_info(path).size)


def read_range(uri: str, offset: int, length: int) -> bytes:
    """``length`` bytes of ``uri`` from ``offset`` (fewer at its end): a ranged read, local or S3."""
    fs, path = storage.filesystem_for(uri)
    with fs.open_input_file(path) as f:
        return bytes(f.read_at(length, offset))


def content_hash(parts: Iterable[bytes]) -> str:
    """sha256 hex digest of ``parts`` (each length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(f"{len(p)}\n".encode() + p)
    return h.hexdigest()


@dataclass(frozen=True)
class _Call:
    """The map_batches function of :func:`parallel_map`: one item per batch, its result pickled."""

    fn: Callable[[Any], Any]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import pickle

        out = []
        for item in batch["item"]:
            try:
                out.append(pickle.dumps((True, self.fn(pickle.loads(item)))))
            except Exception as e:  # raised again on the driver, as itself (not wrapped by Ray)
                out.append(pickle.dumps((False, e)))
        return {"index": batch["index"], "result": np.array(out, dtype=object)}


# data.preparation auto: Ray Data from this many source bytes on, on a cluster of RAY_MIN_CPUS or more.
# bench/data_scale.py on 2 CPUs: one process prepares 10 MB-1 GB of char corpora at 10-33 MB/s and 2M
# parallel pairs (143 MB gzip'd) as fast or faster than Ray Data, which costs 2-6 s more to start and
# never won clearly; its tasks run at ~25 MB/s each, so from 4 CPUs on 256 MiB should take about half.
RAY_THRESHOLD_BYTES = 256 << 20
RAY_MIN_CPUS = 4


def use_ray(preparation: str, source_bytes: Callable[[], int]) -> bool:
    """Whether a preparation runs on Ray Data: ``data.preparation`` ``ray``, or ``auto`` with
    ``source_bytes()`` (asked only then) of :data:`RAY_THRESHOLD_BYTES` or more on a running Ray of
    :data:`RAY_MIN_CPUS` CPUs or more. RuntimeError for ``ray`` without a running Ray instance."""
    if preparation == "local":
        return False
    import ray  # deferred: the driver has started it before preparing

    if preparation == "ray":
        if not ray.is_initialized():
            raise RuntimeError("data.preparation ray needs a running Ray instance (the driver starts one)")
        return True
    if not ray.is_initialized() or ray.cluster_resources().get("CPU", 0) < RAY_MIN_CPUS:
        return False
    return source_bytes() >= RAY_THRESHOLD_BYTES


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    use_ray: bool,
    progress: Callable[[int, int], None] | None = None,
    num_cpus: float = 1,
    max_calls: int | None = None,
) -> list[R]:
    """``[fn(item) for item in items]``, on Ray Data when ``use_ray`` (one Ray task per item, the
    cluster's CPUs; Ray must be initialised) else in this process. ``fn`` and the items must be
    picklable; ``progress(done, total)`` is called as items finish. Results are in ``items``' order.
    An exception ``fn`` raises in a Ray task is raised here as itself (it must pickle). ``max_calls``:
    a Ray worker process is replaced after that many items (what a long-lived worker accumulates
    over many items, e.g. a fragmented heap, is then bounded)."""
    import pickle

    total = len(items)
    if not use_ray or total <= 1:
        out = []
        for i, item in enumerate(items):
            out.append(fn(item))
            if progress:
                progress(i + 1, total)
        return out
    import ray.data

    source = ray.data.from_items([{"index": i, "item": pickle.dumps(item)} for i, item in enumerate(items)])
    extra: dict[str, Any] = {} if max_calls is None else {"max_calls": max_calls}
    ds = source.repartition(total).map_batches(
        _Call(fn), batch_size=1, num_cpus=num_cpus, zero_copy_batch=True, **extra
    )
    results: dict[int, R] = {}
    for row in ds.iter_rows():
        ok, value = pickle.loads(row["result"])
        if not ok:
            raise value
        results[int(row["index"])] = value
        if progress:
            progress(len(results), total)
    return [results[i] for i in range(total)]


__all__ = [
    "COMPRESSION",
    "RAY_MIN_CPUS",
    "RAY_THRESHOLD_BYTES",
    "ROWS_PER_GROUP",
    "ShardInfo",
    "ShardedSplit",
    "SplitShards",
    "commit",
    "content_hash",
    "epoch_order",
    "file_size",
    "hash_uri",
    "parallel_map",
    "read_range",
    "shard_name",
    "start_fresh",
    "use_ray",
    "write_shard",
]
