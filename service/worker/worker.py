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

The training controls every task gets through the Worker: the learning-rate schedule
(:mod:`.schedule`), gradient accumulation (:meth:`Worker.micro_batches`, :meth:`Worker.backward`,
:meth:`Worker.step`), early stopping and the time budget (:mod:`.stopping`; :meth:`Worker.done`),
and preemption: SIGTERM ends the job after the current step with a checkpoint at it
(:mod:`.preemption`; :meth:`Worker.finishes`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from hypermodels import count_parameters

from ..io import storage
from ..io.tracking import FINAL_PREFIX, TAG_REGISTERED, TAG_STOPPED, MetricBuffer, RunLog, log_pytorch_model
from ..paths import run_dir
from ..spec.errors import validate_as
from ..spec.schema import JobSpec, OptimizerSpec
from . import checkpoint as ckpt
from . import preemption
from .failure import FAILURE_FILE
from .precision import MixedPrecision
from .schedule import LRSchedule
from .stopping import Clock, EarlyStopping

J = TypeVar("J", bound=JobSpec)

CHECKPOINT_SCORE = "checkpoint_score"  # the key Ray Train ranks checkpoints by (Worker.checkpoint_score)


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
    Ray Tune's schedulers read in a campaign).

    The training controls: :meth:`restore` builds the learning-rate schedule and the stopping rules
    (and resumes their state); a step is :meth:`micro_batches` (``train.accumulate_steps`` of them,
    DDP synchronising on the last only), :meth:`backward` on each, then :meth:`step`; the loop runs
    ``while not w.done(pos)`` and asks :meth:`log_due`, :meth:`eval_due`, :meth:`checkpoint_due`."""

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
        # The task's validation metric and its direction (the driver passes them from the registry).
        self.valid_metric: str | None = config.get("valid_metric")
        self.valid_mode = config.get("valid_mode", "min")
        tr = self.spec.train
        self.clock = Clock(tr.time_budget_s)
        self.early = EarlyStopping(tr.early_stopping, self.valid_mode) if tr.early_stopping else None
        self.schedule: LRSchedule | None = None  # built by restore, once the run's length is known
        # A constant rate is the param train.optimizer.lr: as a metric it only draws a flat chart on a
        # meaningless axis. Any other schedule logs every step's rate (metric lr).
        sched = self.spec.train.lr_schedule
        self._rate_varies = sched.name != "constant" or sched.warmup_steps > 0
        self.total_steps: int | None = None
        self.over_budget = False
        self.stop_reason: str | None = None
        # Preemption (not saved with checkpoints: a relaunch trains on): the step it stops after, and why.
        self.stop_requests = preemption.StopRequests(run_dir(self.spec) if self.rank == 0 else None)
        preemption.catch_sigterm()
        self.preempted_at: int | None = None
        self.preempted_by = ""
        self._accumulated: list[tuple[int, torch.Tensor]] = []  # this step's micro-batches: (count, reported loss)
        self._scale = 1.0  # what the step's micro-batch losses were divided by (see backward)
        self._evaluated_at = -1  # the step of the latest evaluation

    def emit(self, every_rank: bool = False, **event: Any) -> None:
        """A progress event for the driver's terminal (rank 0 only, unless ``every_rank``: a cause of
        failure that any rank may meet first; never blocks training)."""
        if (self.rank == 0 or every_rank) and self.progress is not None:
            try:
                self.progress.put_nowait(event)
            except Exception:  # a full or vanished queue never stops training
                pass

    def log(self, step: int, **metrics: float) -> None:
        """Record metrics at ``step`` (buffered: MLflow gets them with the next checkpoint)."""
        self.last.update(metrics)
        if self.tracker is not None:
            self.tracker.add(step, **metrics)

    def log_final(self, step: int, curve: dict[str, float], figures: dict[str, float]) -> None:
        """End the run's metrics (rank 0, after the final evaluation) and tell the terminal.

        ``curve``: whole-split figures that end a learning curve (e.g. ``valid_bpc``), logged under
        their own names at ``step``. Every figure of ``curve`` and ``figures`` (test results, per-set
        scores) is also logged once under ``final/<name>``: single points that MLflow's chart view
        groups in a section of their own, apart from the curves, and the runs table shows as columns
        (:data:`FINAL_PREFIX`; ``hyperctl list`` reads them)."""
        self.log(step, **curve)
        self.log(step, **{FINAL_PREFIX + k: v for k, v in {**curve, **figures}.items()})
        assert self.tracker is not None
        self.tracker.flush()
        self.emit(event="final", step=step, metrics={**curve, **figures})

    def log_window(
        self,
        pos: ckpt.Position,
        total_steps: int | None,
        window: Window,
        optimizer: torch.optim.Optimizer,
        loss: tuple[str, float, str],
        rate: tuple[str, str],
    ) -> Window:
        """Record and print the training window: ``loss`` (name, value, unit), throughput ``rate``
        (metric name, unit); print the learning rate. Returns a fresh window."""
        rate_name, rate_unit = rate
        logged = {loss[0]: loss[1], rate_name: window.rate()}
        self.log(pos.step, **logged)  # lr: logged by every step
        # Progress and ETA by whichever bound ends the run first: the steps or the time budget.
        by_steps = pos.step / total_steps if total_steps else 0.0
        eta_steps = window.eta_s(total_steps - pos.step) if total_steps else math.inf
        self.emit(
            event="log",
            step=pos.step,
            total_steps=total_steps,
            fraction=max(by_steps, self.clock.fraction()),
            epoch=pos.epoch,
            eta_s=min(eta_steps, self.clock.left_s()),
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
        self._evaluated_at = pos.step
        value = metrics.get(self.valid_metric or "")
        if value is not None:
            if self.schedule is not None:
                self.schedule.evaluated(value)
            if self.early is not None and not self.early.update(pos.step, value) and self.early.stopped:
                self._stop(
                    pos,
                    f"early_stopping at step {pos.step}: {self.valid_metric} best {self.early.best_value():.6g} "
                    f"at step {self.early.best_step}, no improvement in {self.early.bad} evaluations",
                )
        self.report_eval(pos)

    def restore(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, total_steps: int | None = None
    ) -> tuple[ckpt.Position, Any]:
        """The position (and recurrent state) to continue from: Ray's latest checkpoint, else zero.
        Builds the learning-rate schedule of a run of ``total_steps`` optimizer steps (None: the time
        budget alone bounds it) and resumes it, early stopping and the budget's clock."""
        import ray.train

        self.total_steps = total_steps
        self.schedule = LRSchedule(self.spec.train.lr_schedule, optimizer, total_steps, self.valid_mode)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return ckpt.Position(), None
        restored = load_intact(
            checkpoint,
            lambda folder: ckpt.load(folder, self.rank, self.world, model, optimizer, self.device),
            self._say,
        )
        self.amp.load_state_dict(restored.grad_scaler)
        self.load_controls(restored.controls)
        return restored.position, restored.recurrent_state

    def controls_state(self) -> dict[str, Any]:
        """What the controls need for an exact resume (saved with every checkpoint)."""
        return {
            "lr_schedule": None if self.schedule is None else self.schedule.state_dict(),
            "early_stopping": None if self.early is None else self.early.state_dict(),
            "elapsed_s": self.clock.elapsed(),
            "stop_reason": self.stop_reason,
        }

    def load_controls(self, state: dict[str, Any]) -> None:
        if not state:  # a checkpoint from before the controls
            return
        if self.schedule is not None and state.get("lr_schedule"):
            self.schedule.load_state_dict(state["lr_schedule"])
        if self.early is not None and state.get("early_stopping"):
            self.early.load_state_dict(state["early_stopping"])
        self.clock.before = state.get("elapsed_s", 0.0)
        self.stop_reason = state.get("stop_reason")

    def _stop(self, pos: ckpt.Position, reason: str) -> None:
        """Training ends after this step, before its last one: say why on the run (a tag) and the terminal."""
        self.stop_reason = reason
        if self.tracker is not None:
            self.tracker.set_tags(**{TAG_STOPPED: reason})
        self.emit(event="info", text=f"training stops: {reason}")

    def done(self, pos: ckpt.Position) -> bool:
        """Whether training ends at ``pos``: its last step, the time budget spent (at the first step
        past it), early stopping or preemption (the same answer on every rank)."""
        if self.total_steps is not None and pos.step >= self.total_steps:
            return True
        if self.preempted_at is not None:
            return True
        if self.over_budget and self.stop_reason is None:
            self._stop(pos, f"time_budget {self.spec.train.time_budget} spent at step {pos.step}")
        return self.stop_reason is not None

    def log_due(self, pos: ckpt.Position) -> bool:
        return pos.step % self.spec.train.log_every == 0 or self.done(pos)

    def eval_due(self, pos: ckpt.Position) -> bool:
        """Every ``eval_every`` steps, except at the end (the loop's final evaluation follows); a
        preempted run has no final evaluation, so its last step evaluates when one is due there (before
        the checkpoint, as the uninterrupted run does: the relaunch continues the same history)."""
        return pos.step % self.spec.train.eval_every == 0 and (not self.done(pos) or self.preempted_at is not None)

    def checkpoint_due(self, pos: ckpt.Position) -> bool:
        """Every ``checkpoint_every`` steps and at the end; with early stopping also at every
        evaluation that reached a new best value, so that the best checkpoint exists to be kept."""
        improved = self.early is not None and self.early.top_step == pos.step == self._evaluated_at
        return pos.step % self.spec.train.checkpoint_every == 0 or self.done(pos) or improved

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
        """One optimizer step on one batch: :meth:`backward` then :meth:`step` (a loop without
        gradient accumulation)."""
        self.backward(loss_sum, count, reported)
        return self.step(pos, model, optimizer)

    def micro_batches(self, ddp: torch.nn.Module) -> Iterator[int]:
        """The ``train.accumulate_steps`` micro-batches of one optimizer step (their index): run the
        forward and :meth:`backward` of each in the loop's body. DDP's gradient all-reduce runs only
        in the last one's backward (the others under ``no_sync``): one synchronisation per step."""
        from torch.nn.parallel import DistributedDataParallel

        k = self.spec.train.accumulate_steps
        for i in range(k):
            last = i == k - 1
            with nullcontext() if last or not isinstance(ddp, DistributedDataParallel) else ddp.no_sync():
                yield i

    def backward(self, loss_sum: torch.Tensor, count: int, reported: torch.Tensor | None = None) -> None:
        """Accumulate the gradient of one micro-batch's summed loss over ``count`` items.

        The step's gradient is that of the summed loss over the step's whole count (as one batch
        k times larger). The count of later micro-batches is not known yet, so each is scaled by
        the first's count x k and :meth:`step` corrects by the true total (exactly 1 without
        accumulation): gradients stay at the mean's magnitude, as fp16's scaler expects."""
        if not self._accumulated:
            self._scale = max(count, 1) * self.spec.train.accumulate_steps
        self.amp.accumulate(loss_sum / self._scale)
        self._accumulated.append((count, (loss_sum if reported is None else reported).detach()))

    def step(
        self, pos: ckpt.Position, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[float, float] | None:
        """The optimizer step on the accumulated gradients (through ``train.precision``'s scaler,
        clipped to ``train.grad_clip``, averaged across ranks by DDP), then the schedule's step.
        Returns the global (summed over ranks) reported loss and count, or None when any rank went
        non-finite: the step is then not taken (see :meth:`all_finite`)."""
        count = sum(c for c, _ in self._accumulated)
        reported = torch.stack([r.float() for _, r in self._accumulated]).sum()
        self._accumulated = []
        lr = optimizer.param_groups[0]["lr"]
        grad_norm = self.amp.unscale_and_clip(
            optimizer, model.parameters(), self.spec.train.grad_clip, multiplier=self._scale / max(count, 1)
        )
        checked_norm = None if self.amp.scaling else grad_norm  # fp16: the scaler skips overflowing steps
        totals = self.all_finite(pos, reported, count, checked_norm)
        if totals is not None:
            self.amp.step(optimizer)
            if self.schedule is not None:
                self.schedule.step()
            if self._rate_varies:  # MLflow's lr at step s: the rate step s was taken with
                self.log(pos.step + 1, lr=lr)
        optimizer.zero_grad(set_to_none=True)
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
        # The time budget and preemption ride on the same all-reduce: any rank past the budget, or
        # signalled (or rank 0 seeing the driver's request), ends training on all of them after this step.
        over = self.clock.over()
        signals = self.stop_requests.flags()
        stats = torch.tensor(
            [loss_value, count, float(bad), float(over), *signals], dtype=torch.float64, device=self.device
        )
        if self.world > 1:
            dist.all_reduce(stats)
        global_loss, global_count, bad_ranks, over_ranks, worker_signals, driver_requests = stats.tolist()
        self.over_budget = over_ranks > 0
        why = preemption.reason(worker_signals, driver_requests)
        if why is not None and self.preempted_at is None and bad_ranks == 0:
            self.preempted_at, self.preempted_by = pos.step + 1, why
            self.emit(event="info", text=f"{why}: training stops after step {pos.step + 1} with a checkpoint at it")
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

        # Storage down: wait (said, with backoff) before anything is written; then every file of the
        # checkpoint is uploaded and verified by this worker (_upload), with retries said the same way.
        what = f"checkpoint {pos.step}"
        try:
            storage.wait_reachable(run_dir(self.spec), what, self._say_all, self._delays())
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
                    controls=self.controls_state(),
                )
                ray.train.report(
                    {"step": pos.step, "epoch": pos.epoch, **self.last, CHECKPOINT_SCORE: self.checkpoint_score(pos)},
                    checkpoint=ray.train.Checkpoint.from_directory(folder),
                    checkpoint_dir_name=f"checkpoint_{pos.step:08d}",
                    checkpoint_upload_fn=functools.partial(self._upload, what),
                )
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        except storage.StorageUnreachableError as e:
            # The job's failure cause (the driver reports it): Ray's own error would be a restarted
            # attempt's, which fails at once on the same storage.
            self.emit(every_rank=True, event="error", message=str(e), cause=True)
            raise
        if self.tracker is not None:
            self.tracker.flush()
        self.emit(event="checkpoint", step=pos.step)
        if self.rank == 0 and self.preempted_at == pos.step:  # for the driver: the run ends here, to resume
            preemption.write_outcome(run_dir(self.spec), pos.step, self.preempted_by)

    def finishes(self) -> bool:
        """Whether this rank runs the loop's finish (final evaluation, artifacts) once training ends:
        rank 0, unless the job was preempted (a relaunch continues it; the finish is the finished run's)."""
        return self.rank == 0 and self.preempted_at is None

    def _delays(self) -> tuple[float, ...]:
        """The waits of a storage retry: ``storage_retry_s`` of the job."""
        return storage.wait_delays(self.spec.storage_retry_s)

    def _upload(self, what: str, checkpoint: Any, dir_name: str) -> Any:
        """Ray's ``checkpoint_upload_fn``: this rank's files to ``<storage>/<name>/<dir_name>``, each
        verified once written and retried while the storage is unreachable (:func:`ckpt.upload`).
        The requests go through our own client, which fails fast, so that every retry is said; the
        checkpoint returned names Ray's filesystem, as Ray requires of a checkpoint it manages."""
        import ray.train

        context = ray.train.get_context().get_storage()
        destination = context.build_checkpoint_path_from_name(dir_name)
        fs, _ = storage.filesystem_for(run_dir(self.spec))
        uri = storage.join(run_dir(self.spec), dir_name)
        delays = self._delays()
        ckpt.upload(
            checkpoint.path,
            self.rank,
            fs,
            destination,
            lambda action: storage.retrying(action, uri, what, self._say_all, delays),
        )
        return ray.train.Checkpoint(destination, context.storage_filesystem)

    def _say(self, line: str, every_rank: bool = False) -> None:
        """A line for every rank's log and the terminal: rank 0's, or (``every_rank``: what one rank may
        meet alone, such as its storage requests failing) every rank's."""
        self.emit(every_rank=every_rank, event="info", text=line)
        print(f"[hyperctl] rank {self.rank}: {line}", flush=True)

    def _say_all(self, line: str) -> None:
        self._say(line, every_rank=True)

    def checkpoint_score(self, pos: ckpt.Position) -> float:
        """What Ray Train ranks checkpoints by (with early stopping, see the driver's CheckpointConfig):
        the validation metric evaluated at this very step; NaN, which ranks last, for a checkpoint
        without one (the latest metric would credit it with an older model's score)."""
        if self.valid_metric is None or self._evaluated_at != pos.step:
            return math.nan
        return float(self.last.get(self.valid_metric, math.nan))

    def start(self, pos: ckpt.Position, total_steps: int | None, model: torch.nn.Module, **extra: Any) -> None:
        self.clock.start()
        self.emit(
            event="start",
            step=pos.step,
            total_steps=total_steps,
            time_budget=self.spec.train.time_budget,
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


SPEC_FILE = "job.json"  # the spec a model was trained with, one of its MLflow model's extra files


def log_model(
    tracker: RunLog,
    model: torch.nn.Module,
    spec: JobSpec,
    input_example: np.ndarray | dict[str, np.ndarray],
    files: dict[str, bytes] | None = None,
) -> None:
    """The trained model as the run's MLflow model ``runs:/<run id>/model`` (rank 0, at the end):
    the ``mlflow.pytorch`` flavour of a CPU copy of ``model``, with the spec (:data:`SPEC_FILE`) and
    ``files`` (what using it needs: a vocabulary, subword models, normalisation) as its extra files
    and ``input_example`` (what its forward takes). With ``tracking.register_model: NAME`` it becomes
    a new version of that registered model (the tag ``hyperctl.registered_model`` says which).
    ``hyperctl evaluate``, ``translate`` and ``sample`` load it (:mod:`service.io.models`)."""
    import copy

    cpu = copy.deepcopy(model).cpu().eval()
    docs = {SPEC_FILE: json.dumps(spec.model_dump(mode="json"), indent=2).encode(), **(files or {})}
    name = spec.tracking.register_model
    _, version = log_pytorch_model(tracker.uri, tracker.run_id, cpu, docs, input_example, spec.task, name)
    if name is not None and version is not None:
        tracker.set_tags(**{TAG_REGISTERED: f"models:/{name}/{version}"})


__all__ = [
    "CHECKPOINT_SCORE",
    "FAILURE_FILE",
    "NonFiniteLossError",
    "SPEC_FILE",
    "Window",
    "Worker",
    "load_intact",
    "log_model",
    "make_optimizer",
    "seed_rank",
]
