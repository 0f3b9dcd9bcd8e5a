"""How a worker's exception is told (service/worker/failure.py): type, message and the innermost
frame of the project's own code, for an exception and for Ray's ``WorkerGroupError`` of several
ranks; which exceptions count as deterministic (not retried)."""

from __future__ import annotations

import re

import pytest

from service.spec.errors import JobSpecError
from service.worker import failure
from service.worker.checkpoint import Position


def raised_in_project() -> BaseException:
    try:
        Position.from_dict({"step": 1, "bogus": 2})  # TypeError inside service/worker/checkpoint.py
    except TypeError as e:
        return e
    raise AssertionError("no error")


def test_an_exception_is_told_with_the_projects_frame() -> None:
    e = raised_in_project()
    told = failure.describe(e)
    assert re.fullmatch(r"TypeError: .*'bogus'.* \(at service/worker/checkpoint\.py:\d+ in from_dict\)", told), told


def test_a_worker_group_error_is_told_rank_by_rank() -> None:
    from ray.train.v2.api.exceptions import WorkerGroupError

    e = raised_in_project()
    tb = 'Traceback (most recent call last):\n  File "/x/service/tasks/char_lm/loop.py", line 42, in train_loop\n'
    group = WorkerGroupError(f"[Rank 0]\n{tb}", {0: e, 1: OSError("peer gone")})
    told = failure.describe(group)
    assert told.startswith("worker error, rank 0: TypeError: ") and "WorkerGroupError" not in told
    assert "rank 1: OSError: peer gone (at service/tasks/char_lm/loop.py:42 in train_loop)" in told


@pytest.mark.parametrize(
    "error, deterministic",
    [
        (ValueError("bad data"), True),
        (JobSpecError("job", ["data.x: bad"]), True),
        (KeyError("id"), True),
        (ZeroDivisionError(), True),
        (RuntimeError("NCCL timeout"), False),
        (OSError("connection reset"), False),
    ],
)
def test_what_is_deterministic(error: BaseException, deterministic: bool) -> None:
    assert isinstance(error, failure.DETERMINISTIC) is deterministic
