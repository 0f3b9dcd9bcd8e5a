"""service.io.storage against the local disk and a real S3 server (SeaweedFS, see conftest.py)."""

from __future__ import annotations

import os
import time

import pyarrow.fs as pafs
import pytest

from service.io import storage
from service.io.storage import StorageError


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh folder URI on each backend."""
    return str(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_prefix")


def test_round_trip(root: str) -> None:
    uri = storage.join(root, "a", "b.bin")
    assert not storage.exists(uri)
    storage.write_bytes_atomic(uri, b"first")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"first"
    storage.write_bytes_atomic(uri, b"second, longer")
    assert storage.read_bytes(uri) == b"second, longer"
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        storage.read_bytes(storage.join(root, "nope.bin"))


def test_local_atomic_write_leaves_no_temp_files(tmp_path) -> None:
    uri = str(tmp_path / "d" / "x.json")
    storage.write_bytes_atomic(uri, b"{}")
    storage.write_bytes_atomic(uri, b"{} ")
    assert os.listdir(tmp_path / "d") == ["x.json"]


def test_local_paths_are_absolute(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = storage.filesystem_for("runs/x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "runs" / "x")
    assert storage.storage_options_for_ray("runs") == (str(tmp_path / "runs"), None)


def test_join() -> None:
    assert storage.join("s3://b/runs/", "x/", "y.json") == "s3://b/runs/x/y.json"
    assert storage.join("/data", "x", "y.json") == "/data/x/y.json"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("s3://", "no bucket name"),
        ("s3:///key", "no bucket name"),
        ("gs://bucket/x", "unsupported scheme 'gs://'"),
        ("http://host/x", "unsupported scheme 'http://'"),
        ("", "empty URI"),
    ],
)
def test_malformed_uris(uri: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        storage.filesystem_for(uri)
    with pytest.raises(StorageError, match=message):
        storage.check_reachable(uri)


def test_s3_filesystem_from_environment(s3_env) -> None:
    fs, path = storage.filesystem_for(f"s3://{s3_env.bucket}/runs/")
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_env.bucket}/runs"
    assert fs.region == "us-east-1"
    assert storage.storage_options_for_ray(f"s3://{s3_env.bucket}/runs")[0] == f"{s3_env.bucket}/runs"
    for obj in (fs, storage.storage_options_for_ray(f"s3://{s3_env.bucket}/runs"), s3_env):
        assert s3_env.secret_key not in repr(obj) and s3_env.access_key not in repr(obj)


def test_large_write_lands_on_s3(s3_prefix: str, s3_env) -> None:
    """12 MiB goes through a multipart upload; a server that refuses it must not pass silently."""
    data = os.urandom(12 * 2**20)
    uri = storage.join(s3_prefix, "big.bin")
    storage.write_bytes_atomic(uri, data)
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key=uri.removeprefix(f"s3://{s3_env.bucket}/"))
    assert head["ContentLength"] == len(data)
    assert storage.read_bytes(uri) == data


def test_check_reachable_ok(s3_prefix: str, s3_env) -> None:
    storage.check_reachable(s3_prefix)
    storage.ensure_dir(s3_prefix)
    key = s3_prefix.removeprefix(f"s3://{s3_env.bucket}/")
    assert "Contents" not in s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=key), "nothing written"
    storage.check_reachable(s3_prefix, writable=True)
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=key).get("Contents", [])
    # pyarrow keeps an empty folder marker when it deletes a folder's last object.
    assert [o["Key"] for o in listed] in ([], [key + "/"]), "the write probe must be deleted again"


def test_check_reachable_missing_bucket(s3_env) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.check_reachable("s3://no-such-bucket/runs")
    with pytest.raises(StorageError, match="no-such-bucket"):
        storage.ensure_dir("s3://no-such-bucket/runs")


def test_check_reachable_dead_endpoint(s3_env, monkeypatch: pytest.MonkeyPatch) -> None:
    from s3server import free_ports

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_ports(1)[0]}")
    start = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint http://127.0.0.1:"):
        storage.check_reachable(f"s3://{s3_env.bucket}/runs")
    assert time.monotonic() - start < 5


def test_check_reachable_wrong_credentials(s3_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="access denied") as err:
        storage.check_reachable(f"s3://{s3_env.bucket}/runs")
    assert "not-the-secret" not in str(err.value)


def test_check_reachable_no_credentials(s3_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no credentials in the environment"):
        storage.check_reachable(f"s3://{s3_env.bucket}/runs")


def test_check_reachable_local(tmp_path) -> None:
    storage.check_reachable(str(tmp_path / "new" / "runs"), writable=True)
    assert not (tmp_path / "new").exists(), "checking must not create anything"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is not a folder"):
        storage.check_reachable(str(tmp_path / "file"))
    with pytest.raises(StorageError, match="is a file"):
        storage.check_reachable(str(tmp_path / "file" / "runs"))


def test_check_reachable_local_unwritable(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root ignores permission bits
        pytest.skip("running as root: permission bits are not enforced")
    with pytest.raises(StorageError, match="not writable"):
        storage.check_reachable(str(locked / "runs"), writable=True)
