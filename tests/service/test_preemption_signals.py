"""Preemption's pieces without Ray (issue 14; the whole path is tests/service/test_preemption.py):
what SIGTERM does in a worker process and in the driver, rank 0's look for the driver's request,
and the reasons the all-reduced flags give."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.driver.local import _PreemptOnSigterm
from service.worker import preemption


@pytest.fixture
def clean_sigterm() -> Iterator[None]:
    """This process's SIGTERM handler and preemption flag as they were."""
    before = signal.getsignal(signal.SIGTERM)
    preemption._signalled.clear()
    yield
    signal.signal(signal.SIGTERM, before)
    preemption._signalled.clear()


def test_the_reason_names_who_was_signalled() -> None:
    assert preemption.reason(0.0, 0.0) is None
    assert preemption.reason(0.0, 1.0) == "SIGTERM to the driver"
    assert preemption.reason(1.0, 0.0) == "SIGTERM to 1 worker"
    assert preemption.reason(2.0, 1.0) == "SIGTERM to the driver and SIGTERM to 2 workers"


def test_a_worker_process_notes_the_first_sigterm_and_exits_on_the_second(clean_sigterm: None) -> None:
    exits: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: exits.append(signum))  # as Ray's handler (it exits)
    preemption.install()
    preemption.install()  # once only: a second install keeps the first's "previous"
    assert not preemption.signalled()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert preemption.signalled() and exits == []
    assert preemption.StopRequests(None).flags() == (1.0, 0.0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert exits == [signal.SIGTERM]


def test_catch_sigterm_changes_nothing_outside_a_ray_actor(clean_sigterm: None) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert preemption.catch_sigterm() is False
    assert signal.getsignal(signal.SIGTERM) is before


def test_rank_0_sees_the_request_at_most_every_poll(tmp_path: Path) -> None:
    requests = preemption.StopRequests(str(tmp_path), poll_s=3600)
    assert requests.flags() == (0.0, 0.0)  # looked now: nothing
    preemption.write_request(str(tmp_path), "SIGTERM to the driver")
    assert requests.flags() == (0.0, 0.0)  # the next look is an hour away
    assert preemption.StopRequests(str(tmp_path), poll_s=3600).flags() == (0.0, 1.0)
    assert preemption.StopRequests(None).flags() == (0.0, 0.0)  # other ranks do not look
    preemption.clear(str(tmp_path))
    assert not (tmp_path / preemption.REQUEST_FILE).exists()


def test_the_driver_asks_once_then_stops_at_once(clean_sigterm: None, tmp_path: Path) -> None:
    said = io.StringIO()
    with _PreemptOnSigterm(str(tmp_path), lambda line: print(line, file=said), grace_s=3600):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert (tmp_path / preemption.REQUEST_FILE).exists()
        assert "[stop]  SIGTERM: the workers finish their step and write a checkpoint" in said.getvalue()
        with pytest.raises(KeyboardInterrupt, match="again after"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
    assert signal.getsignal(signal.SIGTERM) is not None and not isinstance(
        signal.getsignal(signal.SIGTERM), _PreemptOnSigterm
    )


def test_the_driver_stops_at_once_when_the_workers_take_longer_than_the_grace(
    clean_sigterm: None, tmp_path: Path
) -> None:
    with pytest.raises(KeyboardInterrupt, match="again after"):
        with _PreemptOnSigterm(str(tmp_path), lambda line: None, grace_s=0.2):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5.0)
