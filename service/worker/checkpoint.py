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
"""

from __future__ import annotations

import json
import random
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
        (directory / META_FILE).write_text(json.dumps({**meta, **scaler, **asdict(position)}, indent=2))


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
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("world_size") != world_size:
        raise RuntimeError(
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


__all__ = ["CONTROLS_FILE", "Position", "Restored", "load", "rank_file", "rng_state", "save", "set_rng_state"]
