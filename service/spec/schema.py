"""The sections every job shares and :class:`JobSpec`, the base of each task's job class.

A task (:mod:`service.tasks`) defines its job class by subclassing :class:`JobSpec` with its own
``task`` literal, ``data`` section (a :class:`DataSpec`), ``model`` section (a :class:`ModelSpec`)
and, where it has keys of its own, ``train`` section (a :class:`TrainSpec`). Read a document with
:func:`service.spec.loading.validate_job`, which picks the task's class from the registry.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .search import SearchSpec
from .strict import Strict
from .tree import flatten

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class DataSpec(Strict):
    """The base of every task's ``data`` section: the global batch, which every task splits evenly
    across its workers."""

    batch_size: int = Field(gt=0, description="global batch, split evenly across workers")

    # The keys that name the user's own files. A task whose ``dataset`` defaults to a built-in data set
    # lists them: a job that gives any of them and does not set ``dataset`` means its own files, so the
    # built-in default gives way (``dataset`` becomes null) instead of clashing with them.
    user_file_keys: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _explicit_files_over_builtin_default(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and "dataset" in cls.model_fields
            and "dataset" not in data
            and any(data.get(key) not in (None, {}, []) for key in cls.user_file_keys)
        ):
            return {**data, "dataset": None}
        return data


class ModelSpec(Strict):
    """The base of every task's ``model`` section."""


class HyperSpec(Strict):
    """The hyper cell of a HyperLSTM (paper §2.2): its width N_ĥ and the embedding size N_z."""

    hidden_size: int = Field(128, gt=0, description="hyper-cell units N_ĥ")
    embed_size: int = Field(4, gt=0, description="embedding size N_z")


class OptimizerSpec(Strict):
    """The optimizer of every task."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="sgd only: Nesterov momentum when > 0")


class LRScheduleSpec(Strict):
    """The learning rate over training (:mod:`service.worker.schedule`): ``optimizer.lr`` shaped by
    an optional linear warm-up and one schedule."""

    name: Literal["constant", "step", "cosine", "plateau"] = Field(
        "constant",
        description="constant; step: x factor at each of milestones (the paper's WRN recipe); cosine: "
        "down to min_lr at the last step; plateau: x factor when the validation metric stalls for patience evaluations",
    )
    warmup_steps: int = Field(
        0, ge=0, description="linear warm-up from lr/warmup_steps to lr over the first optimizer steps (any schedule)"
    )
    milestones: list[int] = Field(
        default_factory=list,
        description="step: the optimizer steps (counted from the start) at which the rate is multiplied by factor",
    )
    factor: float = Field(0.1, gt=0.0, lt=1.0, description="step, plateau: what each decay multiplies the rate by")
    min_lr: float = Field(0.0, ge=0.0, description="cosine: the rate at the last step; plateau: the lowest rate")
    patience: int = Field(
        0, ge=0, description="plateau: evaluations without improvement tolerated before the rate is cut"
    )

    # The keys each schedule reads; a key given for another schedule is a mistake, not a no-op.
    OWN_KEYS: ClassVar[dict[str, set[str]]] = {
        "constant": set(),
        "step": {"milestones", "factor"},
        "cosine": {"min_lr"},
        "plateau": {"factor", "min_lr", "patience"},
    }

    @model_validator(mode="after")
    def _keys_of_the_schedule(self) -> LRScheduleSpec:
        # Compared with the defaults, not model_fields_set: a dumped spec (a campaign's trials) sets every key.
        defaults = LRScheduleSpec.model_construct()
        stray = sorted(
            key
            for key in set(type(self).model_fields) - {"name", "warmup_steps"} - self.OWN_KEYS[self.name]
            if getattr(self, key) != getattr(defaults, key)
        )
        if stray:
            raise ValueError(
                f"{', '.join(stray)} not read by name: {self.name} "
                f"(it reads {', '.join(sorted(self.OWN_KEYS[self.name])) or 'only warmup_steps'})"
            )
        if self.name == "step":
            ms = self.milestones
            if not ms or any(m <= 0 for m in ms) or ms != sorted(set(ms)):
                raise ValueError(f"milestones: expected increasing positive optimizer steps for name: step, found {ms}")
            if ms[0] <= self.warmup_steps:
                raise ValueError(f"milestones: expected steps after warmup_steps ({self.warmup_steps}), found {ms}")
        return self


class EarlyStoppingSpec(Strict):
    """Stop when the task's validation metric (evaluated every ``train.eval_every`` steps) stops improving."""

    patience: int = Field(gt=0, description="evaluations without improvement before training stops")
    min_delta: float = Field(
        0.0, ge=0.0, description="the least change of the validation metric that is an improvement"
    )


DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def duration_s(text: str) -> float:
    """Seconds of a duration such as ``90s``, ``30m``, ``2h`` or ``1h30m``; ValueError otherwise."""
    match = DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"expected a duration such as 90s, 30m, 2h or 1h30m, found {text!r}")
    h, m, s = (float(g or 0) for g in match.groups())
    if h * 3600 + m * 60 + s <= 0:
        raise ValueError(f"expected a positive duration, found {text!r}")
    return h * 3600 + m * 60 + s


class TrainSpec(Strict):
    """How long and how every task trains; a task may extend it with its own keys."""

    optimizer: OptimizerSpec = OptimizerSpec()
    grad_clip: float | None = Field(1.0, gt=0.0, description="global gradient-norm clip; null for none")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; give this, epochs or time_budget")
    epochs: int | None = Field(
        None, gt=0, description="passes over the training data; give this, max_steps or time_budget"
    )
    time_budget: str | None = Field(
        None,
        description="wall-clock training time, e.g. 90s, 30m, 2h: training stops at the first step past it, then "
        "runs its final evaluation; alone (no max_steps/epochs) it bounds the run",
    )
    lr_schedule: LRScheduleSpec = Field(LRScheduleSpec(), description="the learning rate per step (default: constant)")
    accumulate_steps: int = Field(
        1, gt=0, description="micro-batches of data.batch_size per optimizer step: the global batch is their product"
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="stop when the validation metric stops improving; the best checkpoint is kept"
    )
    eval_every: int = Field(1000, gt=0, description="steps between validation passes")
    checkpoint_every: int = Field(1000, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0, description="checkpoints retained (the latest ones)")
    log_every: int = Field(50, gt=0, description="steps between train-loss / tokens-per-second records")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp32; or mixed precision on GPU workers: autocast to bf16, or to fp16 with a gradient scaler",
    )
    seed: int = 0

    def total_steps(self, batches_per_epoch: int) -> int | None:
        """Optimizer steps of the whole run: ``max_steps``, or ``epochs`` x the task's batches per epoch
        (a batch: one global batch of ``accumulate_steps`` micro-batches); None when only
        ``time_budget`` bounds the run."""
        if self.max_steps is not None:
            return self.max_steps
        return self.epochs * batches_per_epoch if self.epochs is not None else None

    @property
    def time_budget_s(self) -> float | None:
        return None if self.time_budget is None else duration_s(self.time_budget)

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if value is not None:
            duration_s(value)
        return value

    @model_validator(mode="after")
    def _budget(self) -> TrainSpec:
        if self.max_steps is None and self.epochs is None and self.time_budget is None:
            raise ValueError("give one of train.max_steps, train.epochs and train.time_budget (found none)")
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(
                f"give one of train.max_steps ({self.max_steps}) and train.epochs ({self.epochs}), not both; "
                "to switch a job from one to the other, null the first: --set train.epochs=null --set "
                "train.max_steps=N (or --set train.max_steps=null --set train.epochs=N)"
            )
        if self.lr_schedule.name == "cosine" and self.max_steps is None and self.epochs is None:
            raise ValueError(
                "train.lr_schedule: cosine decays over the run's length: give train.max_steps or train.epochs "
                f"(found only train.time_budget {self.time_budget})"
            )
        return self


class ResourcesSpec(Strict):
    """The Ray Train worker group."""

    workers: int = Field(1, gt=0, description="Ray Train workers (data-parallel ranks)")
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    max_failures: int = Field(3, ge=0, description="restarts from the latest checkpoint before the job fails")


class TrackingSpec(Strict):
    """Where MLflow records the run."""

    uri: str | None = Field(None, description="MLflow tracking URI; null = local sqlite store under storage")
    experiment: str = Field("default", min_length=1)
    register_model: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="register the run's final model in MLflow's model registry under this name (a new "
        "version each finished run; load it as models:/NAME/VERSION); in a search campaign only the best "
        "trial's model is registered, once the campaign ends; null = logged with the run, not registered",
    )


class JobSpec(Strict):
    """A training job: the parts every task shares. A concrete job is one task's subclass, chosen
    by ``task`` in :func:`service.spec.loading.validate_job`; never read a document with this class."""

    name: str = Field(pattern=NAME_PATTERN, description="run name: letters, digits, '.', '_', '-'")
    task: str
    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = Field("./runs", min_length=1, description="checkpoint root: a local folder or s3://bucket/prefix")
    storage_retry_s: float = Field(
        150.0,
        gt=0.0,
        description="seconds a checkpoint write (and the driver's final read) waits out an unreachable storage, "
        "retrying after 1, 2, 4, 8, 16, then every 30 s and saying each wait in a line, before the job fails "
        "naming the storage (the previous checkpoint is kept; relaunching resumes from it)",
    )
    tracking: TrackingSpec = TrackingSpec()
    search: SearchSpec | None = Field(None, description="makes the job a search campaign (service/driver/campaign.py)")

    @model_validator(mode="after")
    def _divisible(self) -> JobSpec:
        batch = self.data.batch_size
        if batch % self.resources.workers:
            raise ValueError(
                f"data.batch_size ({batch}) must be divisible by resources.workers "
                f"({self.resources.workers}): the global batch is split evenly across workers"
            )
        return self

    @model_validator(mode="after")
    def _precision_device(self) -> JobSpec:
        # Decided from the spec alone, so `validate` and `submit` refuse it before anything starts:
        # the service offers mixed precision for GPU workers only (service/worker/precision.py).
        if self.train.precision != "fp32" and self.resources.gpus_per_worker == 0:
            raise ValueError(
                f"train.precision: expected fp32 on CPU workers, found {self.train.precision} with "
                "resources.gpus_per_worker 0; set resources.gpus_per_worker (e.g. 1) to train in "
                f"{self.train.precision} on GPUs, or train.precision: fp32"
            )
        return self

    def step_batch(self) -> tuple[int, str]:
        """The global batch of one optimizer step (``data.batch_size x train.accumulate_steps``; the
        workers split it) and its name for messages about data too small for it."""
        batch, k = self.data.batch_size, self.train.accumulate_steps
        if k == 1:
            return batch, "data.batch_size"
        return batch * k, f"data.batch_size x train.accumulate_steps ({batch} x {k})"

    def flat(self) -> dict[str, Any]:
        """The spec as ``{"a.b.c": value}``, e.g. for MLflow params (a campaign's ``search`` section
        as ``search.*``, a searched key's values as ``search.space.<key>.<kind>``)."""
        out = flatten(self.model_dump(mode="json", exclude={"search"}))
        if self.search is not None:
            search = self.search.model_dump(mode="json", exclude={"space"})
            out.update(flatten(search, "search."))
            for key, domain in self.search.space.items():
                out[f"search.space.{key}.{domain.kind}"] = getattr(domain, domain.kind)
        return out


__all__ = [
    "DataSpec",
    "EarlyStoppingSpec",
    "HyperSpec",
    "LRScheduleSpec",
    "JobSpec",
    "ModelSpec",
    "NAME_PATTERN",
    "OptimizerSpec",
    "ResourcesSpec",
    "TrackingSpec",
    "TrainSpec",
    "duration_s",
]
