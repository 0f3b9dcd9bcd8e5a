"""``hyperctl ui``: an MLflow server on 127.0.0.1 for a local tracking store, in the foreground.

One server worker (each worker imports MLflow on its own: several take minutes on a small machine),
its address printed only once ``/health`` answers, and the server in a process group of its own
that is stopped with everything it started when ``hyperctl ui`` ends (Ctrl-C, SIGTERM, or the
server's own exit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from ..exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from .cluster import HOST, LocalClusterError, check_port, is_running, start_ticks, stop_processes
from .cluster import _http_ok as http_ok

WORKFLOW_TYPE = "machine_learning"  # the UI's training view: runs table and charts, not traces
START_TIMEOUT_S = 300  # one worker answers in about 15 s on 2 idle cores; a busy machine takes longer


def server_command(uri: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    cmd += ["--host", HOST, "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:///"):  # new experiments' artifacts beside the database, as the jobs put them
        cmd += ["--default-artifact-root", str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")]
    return cmd


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, so the server is stopped as on Ctrl-C."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def page(base: str, experiment_id: str | None = None) -> str:
    """The UI's page of an experiment (its runs table), or its home page, in the training view. MLflow
    3.x picks the view from ``workflowType`` in the address (else from the browser's last choice,
    GenAI by default), not from the experiment's kind tag."""
    route = f"experiments/{experiment_id}" if experiment_id else ""
    return f"{base}/#/{route}?workflowType={WORKFLOW_TYPE}"


def serve_ui(
    uri: str,
    port: int,
    experiments: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT_S,
    say: Callable[[str], None] = print,
) -> int:
    """Serve the MLflow UI of the store ``uri`` on 127.0.0.1:``port`` until interrupted; the exit
    code. Once it answers, the addresses of the UI and of each of ``experiments`` (name -> id) are
    printed."""
    try:
        check_port(port, "--port")
    except LocalClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    url = f"http://{HOST}:{port}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no job-runner processes (unused here)
    say(f"starting the MLflow UI for {uri} (one server worker) ...")
    with _sigterm_as_interrupt():
        proc = subprocess.Popen(server_command(uri, port), env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        record = {"pid": proc.pid, "start_ticks": start_ticks(proc.pid)}
        try:
            deadline = time.monotonic() + timeout
            while not http_ok(url + "/health"):
                if proc.poll() is not None:
                    print(f"error: the MLflow server exited ({proc.returncode}) before answering", file=sys.stderr)
                    return EXIT_FAILED
                if time.monotonic() > deadline:
                    print(f"error: the MLflow server did not answer on {url} within {timeout:.0f}s", file=sys.stderr)
                    return EXIT_FAILED
                time.sleep(0.5)
            say(f"MLflow UI: {page(url)}  (store {uri}; Ctrl-C to stop)")
            for name, experiment_id in (experiments or {}).items():
                say(f"  experiment {name}: {page(url, experiment_id)}")
            return EXIT_OK if proc.wait() == 0 else EXIT_FAILED
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            if is_running(record):
                stop_processes([record], grace_s=5.0)
            proc.wait(timeout=10)  # reaped: no zombie left behind


__all__ = ["page", "serve_ui", "server_command"]
