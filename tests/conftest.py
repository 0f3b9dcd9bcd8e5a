"""Shared fixtures: a real S3 server (SeaweedFS) and environments pointing at it.

* ``weed`` (session): its process (:class:`tests.s3server.WeedProcess`): ``stop()`` and ``restart()``
  (same port, identity and data) play a storage outage; a test that stops it restarts it.
* ``s3_server`` (session): the running server, see :class:`tests.s3server.S3Server`
  (``endpoint``, ``access_key``, ``secret_key``, ``bucket``, ``env()``, ``client()``).
  Pass ``{**os.environ, **s3_server.env()}`` to subprocesses.
* ``s3_env``: sets those AWS_* variables for in-process code (monkeypatch) and returns the server.
* ``s3_prefix``: ``s3://<bucket>/<unique folder>`` for one test, with ``s3_env`` applied.
* ``local_ray`` (module): a new local Ray instance of 2 CPUs in this process (as ``hyperctl submit``
  starts one), shut down after the module.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from s3server import S3Server, WeedProcess  # noqa: E402

# Variables that could point code under test at a real account or another endpoint.
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_EC2_METADATA_DISABLED",
)


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory):
    proc = WeedProcess(tmp_path_factory.mktemp("seaweedfs"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def s3_server(weed: WeedProcess) -> S3Server:
    assert weed.server is not None
    return weed.server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_prefix(s3_env: S3Server, request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40]
    return f"s3://{s3_env.bucket}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from service.driver.local import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
