"""Storage faults against a real S3 server (SeaweedFS) behind a loopback TCP proxy that drops or
slows every connection (tests/helpers.py ``TcpProxy``): a checkpoint waits, saying so, while the
storage is unreachable, continues when it is back, and fails naming the storage when the waits run
out (``storage.wait_reachable``, called by ``Worker.save_checkpoint`` before every checkpoint)."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import pytest

from service.io import storage
from service.io.storage import StorageError

from helpers import TcpProxy


@pytest.fixture
def proxied(s3_prefix: str, s3_env, monkeypatch: pytest.MonkeyPatch):
    """(the proxy, a fresh s3:// folder reached through it)."""
    endpoint = urlsplit(s3_env.endpoint)
    proxy = TcpProxy((endpoint.hostname, endpoint.port))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(name, proxy.endpoint)
    yield proxy, s3_prefix
    proxy.close()


def test_a_checkpoint_waits_out_an_outage(proxied) -> None:
    proxy, root = proxied
    proxy.down()
    threading.Timer(4.0, proxy.up).start()
    said: list[str] = []
    t0 = time.monotonic()
    storage.wait_reachable(root, "checkpoint 20", said.append, delays=(1.0,) * 10)
    assert 3.5 < time.monotonic() - t0 < 12
    assert said[0].startswith(f"[storage] checkpoint 20: {root} unreachable (") and "retry in 1 s" in said[0]
    assert said[-1] == f"[storage] {root} reachable again: checkpoint 20 continues"
    storage.write_bytes_atomic(storage.join(root, "after.bin"), b"x" * 1000)
    assert storage.read_bytes(storage.join(root, "after.bin")) == b"x" * 1000


def test_an_outage_longer_than_the_waits_names_the_storage(proxied) -> None:
    proxy, root = proxied
    proxy.down()
    said: list[str] = []
    with pytest.raises(StorageError) as err:
        storage.wait_reachable(root, "checkpoint 40", said.append, delays=(0.2, 0.2))
    assert str(err.value).startswith(f"checkpoint 40: storage {root} unreachable after 3 attempts over 0 s")
    assert "the previous checkpoint is kept" in str(err.value) and len(said) == 2


def test_a_slow_link_delays_but_does_not_break_writes(proxied) -> None:
    proxy, root = proxied
    proxy.delay_s = 0.2
    body = bytes(range(256)) * 1024  # 256 KiB
    t0 = time.monotonic()
    storage.write_bytes_atomic(storage.join(root, "slow.bin"), body)
    assert time.monotonic() - t0 > 0.2
    proxy.delay_s = 0.0
    assert storage.read_bytes(storage.join(root, "slow.bin")) == body


def test_retry_budget_and_the_final_error() -> None:
    """``storage_retry_s`` becomes growing waits that add up to it; the error when they run out names
    the storage and is not one Ray's own upload retry (three more rounds) would match."""
    from ray._common.retry import matches_error
    from ray.train.v2._internal.constants import AWS_RETRYABLE_TOKENS

    assert storage.wait_delays(150) == (
        1,
        2,
        4,
        8,
        16,
        30,
        30,
        30,
        29,
    ) and storage.WAIT_DELAYS_S == storage.wait_delays(150)
    assert storage.wait_delays(40) == (1, 2, 4, 8, 16, 9) and storage.wait_delays(0.5) == (0.5,)
    said: list[str] = []

    def refuse() -> None:
        raise OSError("When writing: AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 7")

    with pytest.raises(storage.StorageUnreachableError) as err:
        storage.retrying(refuse, "s3://b/run", "checkpoint 60", said.append, (1.0, 2.0), sleep=lambda s: None)
    message = f"{type(err.value).__name__}: {err.value}"
    assert message.startswith(
        "StorageUnreachableError: checkpoint 60: storage s3://b/run unreachable after 3 attempts over 3 s; "
        "the previous checkpoint is kept. Last error: s3://b/run: cannot reach the S3 endpoint"
    )
    assert not [t for t in AWS_RETRYABLE_TOKENS if matches_error(t, message)]
    assert [line.rsplit("; ", 1)[1] for line in said] == [
        "attempt 1 of 3, retry in 1 s",
        "attempt 2 of 3, retry in 2 s",
    ]


def test_rays_filesystem_keeps_its_retries_when_pickled(s3_env) -> None:
    """Ray ships the storage filesystem to its controller and workers by pickling it; pyarrow's own
    pickling drops the retry strategy (3 quick attempts instead), ours keeps it."""
    import pickle

    fs = storage.storage_options_for_ray(f"s3://{s3_env.bucket}/runs")[1]
    again = pickle.loads(pickle.dumps(fs))
    assert type(again) is type(fs) and again._rebuild == fs._rebuild and fs._rebuild[0] >= 10
    assert again.get_file_info(s3_env.bucket).type.name == "Directory"


def test_a_checkpoint_upload_is_retried_and_verified(proxied, tmp_path) -> None:
    """ckpt.upload through a dropping proxy: each file written, read back and checked, retried (said)
    while the storage is down; what arrived verifies as a checkpoint."""
    import torch

    from service.worker import checkpoint as ckpt

    proxy, root = proxied
    model = torch.nn.Linear(4, 3)
    local = tmp_path / "local"
    ckpt.save(
        local,
        0,
        ckpt.Position(step=7),
        None,
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        meta={"world_size": 1},
    )
    fs, path = storage.filesystem_for(storage.join(root, "checkpoint_00000007"))
    said: list[str] = []

    def say(line: str) -> None:  # the storage comes back once a failed attempt has been said
        said.append(line)
        proxy.up()

    proxy.down()
    uri = storage.join(root, "checkpoint_00000007")
    names = ckpt.upload(
        local, 0, fs, path, lambda action: storage.retrying(action, uri, "checkpoint 7", say, (1.0,) * 5)
    )
    assert names[-1] == "files_rank_0.json" and set(names) == {p.name for p in local.iterdir()}
    assert said[0].startswith(f"[storage] checkpoint 7: {uri} unreachable (") and said[-1].endswith(
        "checkpoint 7 continues"
    )
    back = tmp_path / "back"
    back.mkdir()
    for name in names:
        (back / name).write_bytes(storage.read_bytes(storage.join(uri, name)))
    assert ckpt.verify(back) == []


def test_an_upload_that_does_not_verify_is_not_accepted(tmp_path) -> None:
    """What arrives is read back and compared with the list: a file whose bytes differ from the
    listed ones (changed after listing, corrupted on the way) fails every attempt, naming it."""
    import json

    import pyarrow.fs as pafs
    import torch

    from service.worker import checkpoint as ckpt

    model = torch.nn.Linear(4, 3)
    local = tmp_path / "local"
    ckpt.save(
        local,
        0,
        ckpt.Position(step=7),
        None,
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        meta={"world_size": 1},
    )
    listing = local / ckpt.files_file(0)
    files = json.loads(listing.read_text())
    files["files"]["optimizer.pt"]["sha256"] = "0" * 64
    listing.write_text(json.dumps(files))
    said: list[str] = []
    with pytest.raises(StorageError, match="optimizer.pt: arrived with another SHA-256 than the one written"):
        ckpt.upload(
            local,
            0,
            pafs.LocalFileSystem(),
            str(tmp_path / "remote"),
            lambda action: storage.retrying(action, str(tmp_path / "remote"), "checkpoint 7", said.append, (0.0,)),
        )
    assert len(said) == 1 and "optimizer.pt: arrived with another SHA-256" in said[0]
