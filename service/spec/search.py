"""The ``search:`` section: a campaign's searched keys, algorithm and scheduler, and its checks.

:func:`check_search` checks a campaign's space against its job's schema; it needs the task's
reported metrics, so :func:`service.spec.loading.validate_job` calls it once the task is known.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from .errors import describe
from .strict import Strict
from .tree import leaf_fields, with_values

# Spec fields a campaign never searches: they name and place the campaign itself.
UNSEARCHABLE = ("name", "task", "storage", "tracking", "search")


class Domain(Strict):
    """One searched key's values: exactly one of ``choice``, ``grid``, ``uniform``, ``loguniform``,
    ``randint``. Ranges are ``[lo, hi]``; ``randint`` draws integers ``lo <= v < hi`` (Tune's
    convention), ``loguniform`` needs ``lo > 0``."""

    choice: list[Any] | None = Field(None, min_length=1, description="values drawn uniformly at random")
    grid: list[Any] | None = Field(None, min_length=1, description="every value is tried (a grid axis)")
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self) -> Domain:
        given = [k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of choice, grid, uniform, loguniform, randint (found {', '.join(given) or 'none'})"
            )
        kind = given[0]
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind}: expected [lo, hi] with lo < hi, found [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: lo must be > 0, found {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def corners(self) -> list[Any]:
        """The values that bound this domain: every listed value, or a range's two ends."""
        kind = self.kind
        if kind in ("choice", "grid"):
            return list(getattr(self, kind))
        lo, hi = getattr(self, kind)
        return [lo, hi - 1] if kind == "randint" else [lo, hi]


class SchedulerSpec(Strict):
    """Early stopping of trials. ``asha``: asynchronous successive halving on the campaign's metric,
    in training steps: a trial is compared with the others at steps grace_period * rf^k < max_t and
    stopped unless it is in the best 1/rf there. ``none``: every trial runs its whole budget."""

    name: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1000, gt=0, description="steps every trial runs before it can be stopped")
    max_t: int | None = Field(None, gt=0, description="steps of a full trial (default: train.max_steps)")
    reduction_factor: float = Field(3.0, gt=1.0, description="keep the best 1/reduction_factor at each rung")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class SearchSpec(Strict):
    """A search campaign: every trial is a whole job (the spec with the sampled values put in).

    ``samples`` and the algorithms:

    * ``random``: ``samples`` trials draw every random key afresh; ``grid`` keys are crossed in
      (Ray Tune's rule): every sample runs the whole grid, so trials = samples x grid points.
    * ``grid``: every key must be ``grid`` or ``choice`` (a choice is a grid axis here); trials =
      grid points x samples, the repeats of a point differing only in ``train.seed`` (seed, seed+1,
      ...; so ``train.seed`` itself cannot be searched when samples > 1).
    * ``optuna``: Optuna's TPE through Ray Tune; ``samples`` trials; no ``grid`` keys.
    """

    metric: str | None = Field(
        None, description="what is optimised: a metric the task reports (default: its validation metric)"
    )
    mode: Literal["min", "max"] | None = Field(
        None, description="min or max (default: the metric's direction as its task declares it)"
    )
    space: dict[str, Domain] = Field(min_length=1, description="dotted spec key -> its values")
    samples: int = Field(1, gt=0, description="trials (random, optuna) or repeats of the grid (see above)")
    max_concurrent: int | None = Field(None, gt=0, description="trials running at once (default: as resources allow)")
    time_budget_s: float | None = Field(None, gt=0, description="no new trials start after this; running ones stop")
    scheduler: SchedulerSpec = SchedulerSpec()
    algorithm: Literal["random", "grid", "optuna"] = "random"
    max_failures: int = Field(2, ge=0, description="times a failed trial is relaunched (from its checkpoint)")
    seed: int | None = Field(0, description="sampler seed (random, optuna): the same campaign draws the same trials")


def check_search(spec: Any, reported: tuple[str, ...]) -> list[str]:
    """A campaign's problems: every key names a searchable leaf field (with a did-you-mean), a
    float range is not put on an integer field, ``search.metric`` is one the task reports to the
    tuner (``reported``), and the spec validates with every listed value and at the low and high
    corners of the space. ``spec`` is a validated job with a ``search`` section; returns one line
    per problem (empty: none)."""
    assert spec.search is not None
    leaves = leaf_fields(type(spec))
    searchable = [k for k in leaves if k.split(".")[0] not in UNSEARCHABLE]
    problems: list[str] = []
    for key, domain in spec.search.space.items():
        if key.split(".")[0] in UNSEARCHABLE:
            problems.append(
                f"search.space.{key}: {key.split('.')[0]} cannot be searched (it names or places the campaign)"
            )
            continue
        if key not in leaves:
            sections = sorted({k.rsplit(".", 1)[0] for k in searchable if k.startswith(key + ".")})
            if sections:
                problems.append(
                    f"search.space.{key}: a section, not a field; search one of its fields "
                    f"({', '.join(k for k in searchable if k.startswith(key + '.'))})"
                )
                continue
            guess = difflib.get_close_matches(key, searchable, n=1, cutoff=0.6)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            problems.append(f"search.space.{key}: names no spec field{hint}")
            continue
        if domain.kind in ("uniform", "loguniform") and leaves[key].annotation in (int, int | None):
            problems.append(
                f"search.space.{key}: an integer field; {domain.kind} draws fractions (use randint or choice)"
            )
    search = spec.search
    if search.metric not in reported:
        guess = difflib.get_close_matches(str(search.metric), reported, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        problems.append(
            f"search.metric: {search.metric!r} is not reported to the tuner by task {spec.task}{hint} "
            f"(one of {', '.join(reported)})"
        )
    kinds = {key: d.kind for key, d in search.space.items()}
    if search.algorithm == "grid":
        problems += [
            f"search.space.{k}: algorithm grid needs grid or choice values, found {kind}"
            for k, kind in kinds.items()
            if kind not in ("grid", "choice")
        ]
        if search.samples > 1 and "train.seed" in search.space:
            problems.append(
                "search.samples: > 1 with algorithm grid repeats every point with seeds seed, seed+1, "
                "...: train.seed cannot also be in search.space"
            )
    if search.algorithm == "optuna":
        problems += [
            f"search.space.{k}: algorithm optuna samples; a grid axis needs algorithm random or grid (or use choice)"
            for k, kind in kinds.items()
            if kind == "grid"
        ]
    if problems:
        return problems
    if spec.search.scheduler.name == "asha":
        sch, steps = spec.search.scheduler, spec.train.max_steps
        max_t = sch.max_t or steps
        if max_t is None:
            return [
                "search.scheduler.max_t: required without train.max_steps (with train.epochs or train.time_budget; "
                "give it in steps, or use train.max_steps)"
            ]
        if steps is not None and max_t > steps:
            return [f"search.scheduler.max_t ({max_t}) is beyond train.max_steps ({steps})"]
        if sch.grace_period >= max_t:
            return [f"search.scheduler.grace_period ({sch.grace_period}) must be below max_t ({max_t})"]
    # Every listed value, then the low and the high corner of the whole space, must make a valid job.
    checks: list[tuple[str, dict[str, Any]]] = []
    for key, domain in spec.search.space.items():
        checks += [(f"search.space.{key}: value {v!r}", {key: v}) for v in domain.corners()]
    lows = {k: d.corners()[0] for k, d in spec.search.space.items()}
    highs = {k: d.corners()[-1] for k, d in spec.search.space.items()}
    checks += [(f"search.space: the low corner {lows}", lows), (f"search.space: the high corner {highs}", highs)]
    for what, values in checks:
        try:
            type(spec).model_validate(with_values(spec, values))
        except ValidationError as e:
            return [f"{what} makes an invalid job: {describe(e.errors()[0], type(spec))}"]
    return []


__all__ = ["UNSEARCHABLE", "Domain", "SchedulerSpec", "SearchSpec", "check_search"]
