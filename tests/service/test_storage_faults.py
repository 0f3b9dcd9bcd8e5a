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
