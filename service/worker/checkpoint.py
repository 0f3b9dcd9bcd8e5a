"""Training checkpoints: what is saved, and how a worker resumes from it exactly.

A checkpoint is one directory that Ray Train assembles from every rank's contribution:

* ``model.pt``      rank 0: the unwrapped model's ``state_dict`` (no DDP ``module.`` prefix)
* ``optimizer.pt``  rank 0: the optimizer's ``state_dict``
* ``meta.json``     rank 0: step, epoch, batch, world size, data root + content hash (the vocab
                    reference), the spec, and (``train.precision: fp16``) the gradient scaler's
                    state under ``grad_scaler`` (absent in older checkpoints: a fresh scaler)
* ``controls.pt``   rank 0: the state of the training controls (learning-rate schedule, early
                    stopping, training seconds for the time budget); absent in older checkpoints
* ``rank_<r>.pt``   every rank: its recurrent state (carried across truncated-BPTT segments) and
                    its RNG states (torch, python ``random``, numpy, and CUDA's where it was used)

Choice documented: the recurrent state is *saved*, per rank, rather than reset at the checkpoint
boundary, so that a run restarted from a checkpoint continues with the same numbers as an
uninterrupted one (same world size required; the spec fixes it). Model and optimizer are identical
on every rank under DDP, so only rank 0 writes them.

Devices: tensors are saved as they are (on the GPU of a GPU run) and every load maps them onto the
loading worker's device, so a checkpoint written on a GPU resumes on a CPU and the reverse. This
module needs neither Ray nor pydantic.

Every rank calls ``ray.train.report(metrics, checkpoint=...)`` with its own directory (Ray 2.60
merges the per-rank directories of one report into one checkpoint folder under
``<storage>/<name>/``; the report is a barrier across ranks).

Integrity: each rank also writes ``files_rank_<r>.json``, the size and SHA-256 of every file it
wrote. :func:`verify` checks a checkpoint against them (every rank's list present, every file
there with its size and checksum) and :func:`load` refuses one that fails
(:class:`CorruptCheckpointError`); the worker then resumes from the previous checkpoint
(:meth:`service.worker.worker.Worker.restore`).

Upload: a rank's files reach the storage through :func:`upload` (Ray's ``checkpoint_upload_fn``,
see ``Worker.save_checkpoint``): each file is written, read back and checked against its listed
size and SHA-256, and written again (with backoff) until it verifies or the retries run out. Ray
registers a checkpoint only once every rank's upload returned, so a registered checkpoint is one
whose every file verifiably arrived.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hypermodels import state_to, state_to_cpu

MODEL_FILE, OPTIMIZER_FILE, META_FILE = "model.pt", "optimizer.pt", "meta.json"
CONTROLS_FILE = "controls.pt"


def rank_file(rank: int) -> str:
    return f"rank_{rank}.pt"


def files_file(rank: int) -> str:
    """The list of the files ``rank`` wrote, with their sizes and checksums."""
    return f"files_rank_{rank}.json"


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files are missing, truncated or altered."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_CHUNK = 1 << 20


def _put_verified(fs: Any, source: Path, path: str, want: dict[str, Any]) -> None:
    """Write ``source`` to ``path`` on ``fs``, read it back, and raise OSError unless its size and
    SHA-256 are ``want``'s."""
    with source.open("rb") as f, fs.open_output_stream(path, compression=None) as out:
        for block in iter(lambda: f.read(_CHUNK), b""):
            out.write(block)
    h, size = hashlib.sha256(), 0
    with fs.open_input_stream(path, compression=None) as back:
        while block := back.read(_CHUNK):
            h.update(block)
            size += len(block)
    if size != want["size"]:
        raise OSError(f"{source.name}: {size:,} bytes arrived, {want['size']:,} were written")
    if h.hexdigest() != want["sha256"]:
        raise OSError(f"{source.name}: arrived with another SHA-256 than the one written")


def upload(
    directory: str | Path,
    rank: int,
    fs: Any,
    destination: str,
    retry: Callable[[Callable[[], None]], None],
) -> list[str]:
    """Copy ``rank``'s part of a checkpoint from ``directory`` to ``destination`` on ``fs`` (a pyarrow
    filesystem), each file verified once written (read back: size and SHA-256 as listed in
    ``files_rank_<r>.json``, the list itself by its own). ``retry`` runs each file's write-and-check
    until it passes (:func:`service.io.storage.retrying`). Returns the names uploaded."""
    directory = Path(directory)
    listing = directory / files_file(rank)
    listed: dict[str, Any] = json.loads(listing.read_text())["files"]
    listed[listing.name] = {"size": listing.stat().st_size, "sha256": _sha256(listing)}
    retry(lambda: fs.create_dir(destination, recursive=True))
    for name, want in listed.items():  # the list last: its presence says the rank's files are there
        retry(functools.partial(_put_verified, fs, directory / name, f"{destination}/{name}", want))
    return list(listed)


def verify(directory: str | Path) -> list[str]:
    """One line per problem of a checkpoint folder: its meta.json missing or unreadable, a rank's
    file list missing, a listed file missing, of another size or with another checksum. Empty when
    every file arrived intact (or for a checkpoint written before files were listed)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except FileNotFoundError:
        return [f"{META_FILE} missing"]
    except ValueError:
        return [f"{META_FILE} is not valid JSON (truncated?)"]
    if not meta.get("files_listed"):
        return []
    problems = []
    for rank in range(int(meta["world_size"])):
        listing = directory / files_file(rank)
        if not listing.is_file():
            problems.append(f"{listing.name} missing (rank {rank}'s files cannot be checked)")
            continue
        for name, want in json.loads(listing.read_text())["files"].items():
            path = directory / name
            if not path.is_file():
                problems.append(f"{name} missing")
            elif path.stat().st_size != want["size"]:
                problems.append(f"{name} has {path.stat().st_size:,} bytes, {want['size']:,} were written")
            elif _sha256(path) != want["sha256"]:
                problems.append(f"{name} has another SHA-256 than the one written")
    return problems


@dataclass
class Position:
    """Where training stands: optimizer steps done, and the next batch of the current epoch (for a
    language model a batch is one truncated-BPTT segment of every stream)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0

    @classmethod
    def from_dict(cls, saved: dict[str, int]) -> Position:
        """A saved position; checkpoints written before the rename call ``batch`` ``segment``."""
        saved = dict(saved)
        if "segment" in saved:
            saved["batch"] = saved.pop("segment")
        return cls(**saved)


def rng_state() -> dict[str, Any]:
    """The RNG states a worker draws from; CUDA's (the current device's) once CUDA is in use."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states; CUDA's only where it was saved and a GPU is here."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(
    directory: str | Path,
    rank: int,
    position: Position,
    recurrent_state: Any,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    meta: dict[str, Any] | None = None,
    grad_scaler: dict[str, Any] | None = None,
    controls: dict[str, Any] | None = None,
) -> None:
    """Write this rank's part of a checkpoint into ``directory`` (rank 0 passes model/optimizer/meta,
    the gradient scaler's ``state_dict``, empty or None when there is none, and the controls' state)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"position": asdict(position), "recurrent_state": state_to_cpu(recurrent_state), "rng": rng_state()},
        directory / rank_file(rank),
    )
    if rank == 0:
        assert model is not None and optimizer is not None and meta is not None
        torch.save(model.state_dict(), directory / MODEL_FILE)
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
        if controls:
            torch.save(controls, directory / CONTROLS_FILE)
        scaler = {"grad_scaler": grad_scaler} if grad_scaler else {}
        (directory / META_FILE).write_text(
            json.dumps({**meta, **scaler, **asdict(position), "files_listed": True}, indent=2)
        )
    written = [rank_file(rank)] + ([MODEL_FILE, OPTIMIZER_FILE, META_FILE] if rank == 0 else [])
    if rank == 0 and controls:
        written.append(CONTROLS_FILE)
    files = {name: {"size": (directory / name).stat().st_size, "sha256": _sha256(directory / name)} for name in written}
    (directory / files_file(rank)).write_text(json.dumps({"files": files}, indent=1))


@dataclass
class Restored:
    position: Position
    recurrent_state: Any
    meta: dict[str, Any]
    grad_scaler: dict[str, Any]  # the scaler's state_dict; empty when the run had none
    controls: dict[str, Any]  # the training controls' state; empty in older checkpoints


def load(
    directory: str | Path,
    rank: int,
    world_size: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> Restored:
    """Load a checkpoint into ``model`` (unwrapped) and ``optimizer``; set this rank's RNG states.

    Tensors are mapped onto ``device`` whatever device wrote them (the optimizer's state as well:
    it must sit with the model's parameters). Returns the position to continue from, this rank's
    recurrent state (on ``device``), the gradient scaler's and the training controls' states.
    """
    directory = Path(directory)
    problems = verify(directory)
    if problems:
        raise CorruptCheckpointError("; ".join(problems))
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("world_size") != world_size:
        raise ValueError(  # a spec mismatch: deterministic, not retried (service.worker.failure)
            f"checkpoint {directory} was written by {meta.get('world_size')} workers, "
            f"this run has {world_size}: exact resume needs the same resources.workers"
        )
    model.load_state_dict(torch.load(directory / MODEL_FILE, map_location=device, weights_only=True))
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location=device, weights_only=True))
    mine = torch.load(directory / rank_file(rank), map_location="cpu", weights_only=False)
    set_rng_state(mine["rng"])
    controls_file = directory / CONTROLS_FILE
    return Restored(
        Position.from_dict(mine["position"]),
        state_to(mine["recurrent_state"], device),
        meta,
        meta.get("grad_scaler", {}),
        torch.load(controls_file, map_location="cpu", weights_only=True) if controls_file.exists() else {},
    )


__all__ = [
    "CONTROLS_FILE",
    "CorruptCheckpointError",
    "Position",
    "Restored",
    "files_file",
    "load",
    "rank_file",
    "rng_state",
    "save",
    "set_rng_state",
    "upload",
    "verify",
]
