"""The generic shard module (service/io/shards.py): written shards read back by row ranges and row
groups, locally and on S3; the commit marker; the per-epoch order; parallel_map's order."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from service.io import datacache, shards


def _write(root: str, sizes: list[int], rows_per_group: int) -> tuple[shards.SplitShards, np.ndarray]:
    rows = np.arange(sum(sizes), dtype=np.int32) * 7 % 1000
    infos, at = [], 0
    for i, n in enumerate(sizes):
        table = pa.table({"id": rows[at : at + n]})
        infos.append(shards.write_shard(root, shards.shard_name("train", i), table, rows_per_group))
        at += n
    return shards.SplitShards(tuple(infos), rows_per_group), rows


@pytest.mark.parametrize("where", ["local", "s3"])
def test_row_ranges_read_back(where, tmp_path, request) -> None:
    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_prefix")
    split, rows = _write(root, [1000, 1, 0, 2500, 333], rows_per_group=256)
    assert split.num_rows == rows.size
    assert shards.SplitShards.from_json(split.to_json()) == split
    reader = shards.ShardedSplit(root, split, ["id"])
    for start, stop in [(0, 1), (0, rows.size), (255, 257), (999, 1002), (1000, 1001), (3000, 3834), (3830, 9999)]:
        got = reader.read(start, stop).column("id").to_numpy()
        assert np.array_equal(got, rows[start:stop]), (start, stop)
    assert reader.read(50, 50).num_rows == 0
    groups = reader.groups()
    assert len(groups) == 4 + 1 + 0 + 10 + 2
    assert np.array_equal(np.concatenate([reader.read_group(*g).column("id").to_numpy() for g in groups]), rows)


def test_reader_touches_only_the_needed_files(tmp_path) -> None:
    split, rows = _write(str(tmp_path), [100, 100, 100], rows_per_group=10)
    os.remove(tmp_path / "train-00000.parquet")
    reader = shards.ShardedSplit(str(tmp_path), split)
    assert np.array_equal(reader.read(150, 260).column("id").to_numpy(), rows[150:260])
    with pytest.raises(FileNotFoundError, match="train-00000.parquet listed in the manifest is missing"):
        reader.read(99, 101)


def test_same_table_same_bytes(tmp_path) -> None:
    table = pa.table({"id": np.arange(5000, dtype=np.int32)})
    shards.write_shard(str(tmp_path / "a"), "x.parquet", table, 1000)
    shards.write_shard(str(tmp_path / "b"), "x.parquet", pa.table({"id": table.column("id").to_numpy()}), 1000)
    assert (tmp_path / "a" / "x.parquet").read_bytes() == (tmp_path / "b" / "x.parquet").read_bytes()


def test_start_fresh_empties_only_an_unfinished_folder(tmp_path) -> None:
    root = str(tmp_path / "prep")
    _write(root, [10, 10], 4)
    shards.start_fresh(root, "manifest.json")
    assert os.listdir(root) == []
    _write(root, [10], 4)
    shards.commit(root, "manifest.json", {"schema_version": 1})
    assert datacache.is_complete(root, "manifest.json")
    with pytest.raises(ValueError, match="is complete"):
        shards.start_fresh(root, "manifest.json")
    assert sorted(os.listdir(root)) == ["manifest.json", "train-00000.parquet"]


def test_epoch_order_is_reproducible() -> None:
    a = shards.epoch_order(50, seed=1, epoch=0)
    assert sorted(a) == list(range(50)) and a == shards.epoch_order(50, seed=1, epoch=0)
    assert a != shards.epoch_order(50, seed=1, epoch=1) and a != shards.epoch_order(50, seed=2, epoch=0)


def test_parallel_map_in_process_keeps_order() -> None:
    seen = []
    out = shards.parallel_map(lambda x: x * x, [3, 1, 2], use_ray=False, progress=lambda d, t: seen.append((d, t)))
    assert out == [9, 1, 4] and seen == [(1, 3), (2, 3), (3, 3)]


def test_ranged_reads_and_hash(tmp_path) -> None:
    import hashlib

    path = tmp_path / "f.bin"
    data = os.urandom(3 * shards.READ_BLOCK // 2)
    path.write_bytes(data)
    assert shards.read_range(str(path), 10, 5) == data[10:15]
    assert shards.read_range(str(path), len(data) - 2, 10) == data[-2:]
    h = hashlib.sha256()
    assert shards.hash_uri(h, str(path), "data.path") == len(data) == shards.file_size(str(path))
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    with pytest.raises(Exception, match="data.path: expected a file, found nothing at"):
        shards.hash_uri(hashlib.sha256(), str(tmp_path / "nope"), "data.path")


def test_cached_groups_are_served_without_reading_again(tmp_path) -> None:
    split, rows = _write(str(tmp_path), [100, 100], rows_per_group=10)
    cached, plain = shards.ShardedSplit(str(tmp_path), split, cache_groups=3), shards.ShardedSplit(str(tmp_path), split)

    class Refuse:  # a file that can no longer be read
        def read_row_group(self, *args, **kwargs):
            raise OSError("read again")

    for reader in (cached, plain):
        assert np.array_equal(reader.read(5, 25).column("id").to_numpy(), rows[5:25])  # groups 0, 1, 2 of file 0
        reader._files[0] = Refuse()
    assert np.array_equal(cached.read(10, 30).column("id").to_numpy(), rows[10:30])  # from the cache
    with pytest.raises(OSError, match="read again"):
        plain.read(10, 30)
    with pytest.raises(OSError, match="read again"):
        cached.read(95, 100)  # group 9 of file 0 was never read: it is not in the cache
