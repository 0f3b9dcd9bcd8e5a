"""What every task's Ray Train worker loop shares: who this rank is, where it reports, how it
checkpoints, resumes and stops on a non-finite loss. The loops themselves (one per task, in
``service/tasks/<task>/loop.py``) stay short and explicit and call these pieces in the open.

Ray is imported inside the methods that use it: the task registry imports every loop module, and
the driver's ``hyperctl validate`` must not pay for importing Ray.

A non-finite loss or gradient norm (agreed on by all ranks through one all-reduce per step) stops
the job: Ray 2.60's failure policy retries every worker error up to ``max_failures`` and offers no
public hook for a non-retryable one, and a deterministic divergence would only repeat. So the
workers do not raise: rank 0 writes ``<storage>/<name>/failure.json`` naming the step, every rank
returns, and the driver raises :class:`NonFiniteLossError` and marks the MLflow run FAILED. The
model is not updated with the bad step and nothing after the last checkpoint reaches MLflow. With
``train.precision: fp16`` an overflowing gradient is the gradient scaler's business (the step is
skipped and the scale lowered, :mod:`.precision`); only a non-finite loss stops the job.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from hypermodels import count_parameters

from ..io import storage
from ..io.tracking import MetricBuffer, RunLog
from ..paths import run_dir
from ..spec.errors import validate_as
from ..spec.schema import JobSpec, OptimizerSpec
from . import checkpoint as ckpt
from .failure import FAILURE_FILE
from .precision import MixedPrecision

J = TypeVar("J", bound=JobSpec)


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; ``step`` is the step that failed."""

    def __init__(self, step: int, message: str) -> None:
        self.step = step
        super().__init__(message)


def make_optimizer(opt: OptimizerSpec, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(
        params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.momentum > 0, weight_decay=opt.weight_decay
    )


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank RNG streams (dropout masks, augmentation differ between ranks, reproducibly)."""
    s = seed * 1009 + rank + 1
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


class Window:
    """Training loss and throughput since the last log line (global: summed over ranks)."""

    def __init__(self) -> None:
        self.loss = self.count = self.seconds = 0.0
        self.steps = 0

    def add(self, loss_sum: float, count: float, seconds: float) -> None:
        self.loss, self.count = self.loss + loss_sum, self.count + count
        self.seconds, self.steps = self.seconds + seconds, self.steps + 1

    def mean_loss(self) -> float:
        return self.loss / max(self.count, 1)

    def rate(self) -> float:
        return self.count / max(self.seconds, 1e-9)

    def eta_s(self, steps_left: int) -> float:
        return steps_left * self.seconds / max(self.steps, 1)


class Worker(Generic[J]):
    """One rank of a job: its spec (validated as the task's ``job_class``), place in the world and
    device, mixed precision (``amp``: :meth:`autocast` around forward and loss, :meth:`optimize`
    for backward and step), progress queue and (rank 0) metric buffer.

    ``last`` holds the latest value of every metric; it goes with each checkpoint report (what
    Ray Tune's schedulers read in a campaign)."""

    def __init__(self, config: dict[str, Any], job_class: type[J]) -> None:
        import ray.train
        import ray.train.torch

        self.config = config
        self.spec: J = validate_as(job_class, config["spec"], "worker")
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()  # the worker's GPU with resources.gpus_per_worker, else CPU
        self.amp = MixedPrecision(self.spec.train.precision, self.device)
        torch.set_num_threads(max(1, int(self.spec.resources.cpus_per_worker)))  # fixed: same numbers run to run
        self.progress = config.get("progress")
        self.tracker = MetricBuffer(config["tracking_uri"], config["run_id"]) if self.rank == 0 else None
        self.last: dict[str, float] = {}

    def emit(self, **event: Any) -> None:
        """A progress event for the driver's terminal (rank 0 only; never blocks training)."""
        if self.rank == 0 and self.progress is not None:
            try:
                self.progress.put_nowait(event)
            except Exception:  # a full or vanished queue never stops training
                pass

    def log(self, step: int, **metrics: float) -> None:
        """Record metrics at ``step`` (buffered: MLflow gets them with the next checkpoint)."""
        self.last.update(metrics)
        if self.tracker is not None:
            self.tracker.add(step, **metrics)

    def log_window(
        self,
        pos: ckpt.Position,
        total_steps: int,
        window: Window,
        optimizer: torch.optim.Optimizer,
        loss: tuple[str, float, str],
        rate: tuple[str, str],
    ) -> Window:
        """Record and print the training window: ``loss`` (name, value, unit), throughput ``rate``
        (metric name, unit); the learning rate is printed, not logged: it is constant (no schedules)
        and already the run's param ``train.optimizer.lr``, and a flat metric only makes a chart on a
        meaningless axis. Returns a fresh window."""
        rate_name, rate_unit = rate
        logged = {loss[0]: loss[1], rate_name: window.rate()}
        self.log(pos.step, **logged)
        self.emit(
            event="log",
            step=pos.step,
            total_steps=total_steps,
            epoch=pos.epoch,
            eta_s=window.eta_s(total_steps - pos.step),
            loss=loss,
            rate=(logged[rate_name], rate_unit),
            lr=optimizer.param_groups[0]["lr"],
        )
        return Window()

    def evaluated(self, pos: ckpt.Position, over: str, **metrics: float) -> None:
        """Record and print a periodic evaluation (``over``: what it covered); a campaign's tuner
        gets it too (:meth:`report_eval`)."""
        self.log(pos.step, **metrics)
        self.emit(event="eval", step=pos.step, metrics=metrics, over=over)
        self.report_eval(pos)

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[ckpt.Position, Any]:
        """The position (and recurrent state) to continue from: Ray's latest checkpoint, else zero."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return ckpt.Position(), None
        restored = load_intact(
            checkpoint,
            lambda folder: ckpt.load(folder, self.rank, self.world, model, optimizer, self.device),
            self._say,
        )
        self.amp.load_state_dict(restored.grad_scaler)
        return restored.position, restored.recurrent_state

    def autocast(self) -> AbstractContextManager[Any]:
        """Wrap forward and loss in this: autocast to ``train.precision`` on the worker's device."""
        return self.amp.autocast()

    def optimize(
        self,
        pos: ckpt.Position,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_sum: torch.Tensor,
        count: int,
        reported: torch.Tensor | None = None,
    ) -> tuple[float, float] | None:
        """One optimizer step on the mean of ``loss_sum`` over ``count`` items (gradients through
        ``train.precision``'s scaler, clipped to ``train.grad_clip``, averaged across ranks by DDP).
        Returns the global (summed over ranks) ``reported`` loss (default: ``loss_sum``) and count,
        or None when any rank went non-finite: the step is then not taken (see :meth:`all_finite`)."""
        optimizer.zero_grad(set_to_none=True)
        mean_loss = loss_sum / max(count, 1)
        grad_norm = self.amp.backward(mean_loss, optimizer, model.parameters(), self.spec.train.grad_clip)
        checked_norm = None if self.amp.scaling else grad_norm  # fp16: the scaler skips overflowing steps
        totals = self.all_finite(pos, loss_sum if reported is None else reported, count, checked_norm)
        if totals is not None:
            self.amp.step(optimizer)
        return totals

    def all_finite(
        self, pos: ckpt.Position, loss_sum: torch.Tensor, count: float, grad_norm: torch.Tensor | None
    ) -> tuple[float, float] | None:
        """One small all-reduce: the global loss sum and count, or None (after writing the failure
        marker) when any rank's loss or gradient norm (None: not checked) is not finite. Call before
        ``optimizer.step``."""
        import torch.distributed as dist

        loss_value = float(loss_sum.detach())
        norm_value = 0.0 if grad_norm is None else float(grad_norm)
        bad = not (math.isfinite(loss_value) and math.isfinite(norm_value))
        stats = torch.tensor([loss_value, count, float(bad)], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(stats)
        global_loss, global_count, bad_ranks = stats.tolist()
        if bad_ranks == 0:
            return global_loss, global_count
        message = (
            f"non-finite loss or gradient at step {pos.step + 1} (epoch {pos.epoch}, batch "
            f"{pos.batch}): training stopped; the last checkpoint is kept"
        )
        if self.rank == 0:
            storage.write_bytes_atomic(
                storage.join(run_dir(self.spec), FAILURE_FILE),
                json.dumps({"step": pos.step + 1, "error": message}).encode(),
            )
            self.emit(event="error", message=message)
        return None

    def broadcast(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (the others wait here while rank 0 evaluates)."""
        import torch.distributed as dist

        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return float(t[0])

    def report_eval(self, pos: ckpt.Position) -> None:
        """Hook for search campaigns (:mod:`service.driver.campaign`): with ``config["report_evals"]``
        every evaluation is also reported to Ray Train, without a checkpoint, so that the
        campaign's Tune callback sees the metric at each eval and ASHA can stop the trial between
        checkpoints. Called on every rank (a report is a barrier across ranks). An eval at a
        checkpoint step is left to the checkpoint's own report. Plain jobs report nothing here."""
        if self.config.get("report_evals") and pos.step % self.spec.train.checkpoint_every:
            import ray.train

            ray.train.report({"step": pos.step, "epoch": pos.epoch, **self.last})

    def save_checkpoint(
        self,
        pos: ckpt.Position,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        meta: dict[str, Any],
        recurrent_state: Any = None,
    ) -> None:
        """Every rank writes its part and reports it to Ray Train (a barrier); then rank 0 flushes
        the buffered metrics to MLflow: everything in MLflow is covered by a checkpoint."""
        import ray.train

        # Storage down: wait (said, with backoff) rather than fail the upload; Ray's own S3 client
        # retries within it (service.io.storage.storage_options_for_ray).
        storage.wait_reachable(run_dir(self.spec), f"checkpoint {pos.step}", self._say)
        folder = tempfile.mkdtemp(prefix=f"hyperctl-ckpt-{self.rank}-")
        try:
            meta = {"spec": self.spec.model_dump(mode="json"), "world_size": self.world, **meta}
            ckpt.save(
                folder,
                self.rank,
                pos,
                recurrent_state,
                model=model,
                optimizer=optimizer,
                meta=meta,
                grad_scaler=self.amp.state_dict(),
            )
            ray.train.report(
                {"step": pos.step, "epoch": pos.epoch, **self.last},
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=f"checkpoint_{pos.step:08d}",
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if self.tracker is not None:
            self.tracker.flush()
        self.emit(event="checkpoint", step=pos.step)

    def _say(self, line: str) -> None:
        """A line for the terminal (rank 0's progress) and every rank's log."""
        self.emit(event="info", text=line)
        print(f"[hyperctl] rank {self.rank}: {line}", flush=True)

    def start(self, pos: ckpt.Position, total_steps: int, model: torch.nn.Module, **extra: Any) -> None:
        self.emit(
            event="start",
            step=pos.step,
            total_steps=total_steps,
            workers=self.world,
            parameters=count_parameters(model),
            threads=torch.get_num_threads(),
            **extra,
        )


def load_intact(checkpoint: Any, load: Callable[[str], ckpt.Restored], report: Callable[[str], None]) -> ckpt.Restored:
    """``load`` of the newest intact checkpoint from ``checkpoint`` (a ``ray.train.Checkpoint``) back:
    one that fails its checksums (:func:`ckpt.verify`) is reported and the one before it tried. Every
    rank verifies every rank's files, so all ranks choose the same checkpoint."""
    for candidate in [checkpoint, *_earlier_checkpoints(checkpoint)]:
        with candidate.as_directory() as folder:
            try:
                return load(folder)
            except ckpt.CorruptCheckpointError as e:
                report(f"checkpoint {candidate.path}: {e}: not used, trying the checkpoint before it")
    raise ckpt.CorruptCheckpointError(f"no intact checkpoint in {os.path.dirname(checkpoint.path)}")


def _earlier_checkpoints(checkpoint: Any) -> list[Any]:
    """The checkpoints of the same run older than ``checkpoint`` (a ``ray.train.Checkpoint``), newest
    first: the ``checkpoint_<step>`` folders beside it."""
    import pyarrow.fs as pafs
    import ray.train

    parent, name = os.path.split(checkpoint.path.rstrip("/"))
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    names = sorted(
        (i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")),
        reverse=True,
    )
    return [ray.train.Checkpoint(f"{parent}/{n}", checkpoint.filesystem) for n in names if n < name]


def log_model(tracker: RunLog, model: torch.nn.Module, spec: JobSpec, **extra: Any) -> None:
    """The trained model as the run's ``model/model.pt`` (rank 0, at the end): its ``state_dict`` on
    the CPU, the spec as a document, and ``extra`` (what using it needs: a vocabulary, subword
    models). ``hyperctl translate`` and the tasks' loaders read this file."""
    with tempfile.TemporaryDirectory(prefix="hyperctl-model-") as tmp:
        path = os.path.join(tmp, "model.pt")
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "spec": spec.model_dump(mode="json"), **extra}, path)
        tracker.log_artifact(path, "model")


__all__ = [
    "FAILURE_FILE",
    "NonFiniteLossError",
    "Window",
    "Worker",
    "load_intact",
    "log_model",
    "make_optimizer",
    "seed_rank",
]
