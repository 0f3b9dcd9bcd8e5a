"""What several test modules share: the project's root, a tiny char-LM job on the first lines of
PTB char that trains in a minute or two, running this checkout's ``hyperctl`` in a child process,
headless Chromium (Debian's ``chromium``) for the MLflow UI checks, and files saved as a GPU worker
saves them."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PTB = ROOT / "data" / "ptb-char"
ARTIFACTS = ROOT / "test-artifacts"  # screenshots and DOMs of the UI checks (gitignored)
CHROMIUM = (
    shutil.which("chromium")
    or shutil.which("chromium-browser")
    or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
)


def write_corpus(folder: Path, lines: dict[str, int]) -> dict[str, str]:
    """The first lines of each PTB-char split as small corpora (PTB's 50 symbols or fewer)."""
    paths: dict[str, str] = {}
    known: set[str] = set()
    for split, n in lines.items():  # train first: valid/test keep only lines of known symbols
        with gzip.open(PTB / f"ptb.char.{split}.txt.gz", "rt", encoding="utf-8") as f:
            kept = [line for line in f if split == "train" or set(line.split()) <= known][:n]
        known |= {s for line in kept for s in line.split()}
        text = "".join(kept)
        path = folder / f"{split}.txt"
        path.write_text(text, encoding="utf-8")
        paths[split] = str(path)
    return paths


def tiny_job(tmp: Path, name: str, **train: object) -> dict:
    corpus = write_corpus(tmp, {"train": 600, "valid": 30, "test": 30})
    return {
        "name": name,
        "data": {"dataset": None, **corpus, "format": "ptb-char", "seq_len": 25, "batch_size": 8, "eval_batch_size": 4},
        "model": {
            "cell": "hyperlstm",
            "hidden_size": 48,
            "layer_norm": True,
            "hyper": {"hidden_size": 16, "embed_size": 4},
            "dropout": {"output": 0.1, "recurrent": 0.1},
        },
        "train": {
            "optimizer": {"name": "adam", "lr": 0.01},
            "max_steps": 60,
            "log_every": 5,
            "eval_every": 20,
            "eval_max_symbols": 2000,
            "checkpoint_every": 20,
            "keep_checkpoints": 2,
            "sample_length": 60,
            **train,
        },
        "resources": {"workers": 2, "cpus_per_worker": 1, "max_failures": 2},
        "storage": str(tmp / "runs"),
        "tracking": {"experiment": "tests"},
    }


def local_env(**extra: str) -> dict[str, str]:
    """This environment for a child that starts its own local Ray instance and MLflow store: without
    RAY_ADDRESS and MLFLOW_TRACKING_URI, with ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return {**env, **extra}


def hyperctl(
    *args: str, cwd: Path, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``hyperctl ARGS`` of this checkout (``python -m service``) in a child process, ``input`` on its
    stdin, its output captured as text; ``env`` defaults to :func:`local_env`."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=cwd,
        input=input,
        env=local_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def saved_as_if_on_gpu() -> Iterator[None]:
    """Inside, ``torch.save`` tags every CPU tensor with the location ``cuda:0``, as a GPU worker's
    tensors are tagged: loading such a file without a GPU needs ``map_location``."""
    from torch import serialization  # deferred: the other helpers need no torch

    entry = (-100, lambda storage: "cuda:0" if storage.device.type == "cpu" else None, lambda storage, location: None)
    serialization.register_package(*entry)
    try:
        yield
    finally:
        serialization._package_registry.remove(entry)  # torch has no public unregister


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until ``url`` (an MLflow server's ``/health``) answers 200; fails with the server's log if the
    server exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert server.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout:.0f} s"
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def chromium(url: str, profile: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url`` with a fresh ``profile``; ``extra``: --dump-dom, --screenshot=PATH."""
    assert CHROMIUM is not None
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--virtual-time-budget=20000",
    ]
    return subprocess.run([CHROMIUM, *flags, *extra, url], capture_output=True, text=True, timeout=timeout)


class TcpProxy:
    """A loopback TCP proxy in front of ``upstream`` (host, port), to play storage faults: ``down``
    drops every connection (open ones and new ones) until ``up``; ``delay_s`` holds each chunk of
    data that long before passing it on (a slow link).

    ``hold(pattern)``: every request whose bytes contain ``pattern`` waits in the proxy (``held`` is
    set once one does) until ``release``; other requests pass. A test uses it to start an outage at
    an exact point of a job: e.g. hold the first request of checkpoint 40's upload, stop the server,
    then release it into the outage, however fast the job trains."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        import socket
        import threading

        self.upstream, self.delay_s, self.is_down = upstream, 0.0, False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._pattern = b""
        self._released = threading.Event()
        self.held = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        with self._lock:
            self.is_down = True
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    def up(self) -> None:
        self.is_down = False

    def hold(self, pattern: bytes) -> None:
        self._released.clear()
        self.held.clear()
        self._pattern = pattern

    def release(self) -> None:
        self._pattern = b""
        self._released.set()

    def close(self) -> None:
        self.release()
        self.down()
        self._listener.close()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.is_down:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b, from_client in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(a, b, from_client), daemon=True).start()

    def _pump(self, src, dst, from_client: bool) -> None:
        import time

        try:
            while data := src.recv(65536):
                if self.delay_s:
                    time.sleep(self.delay_s)
                pattern = self._pattern
                if from_client and pattern and pattern in data:
                    self.held.set()
                    self._released.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
