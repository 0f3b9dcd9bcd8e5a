"""Degenerate prepared data is refused on the driver, right after preparation and before any MLflow
run (issue 16, kind 3): each task's ``check_prepared`` through the shared start-up's
:func:`service.driver.local.prepare`, naming the field that causes it.

Covered: char_lm (a one-symbol validation or test split, fewer training symbols than
``data.batch_size`` streams), translation (``data.max_len`` filtering out every pair, or leaving
less than a batch), image_classification (a batch larger than the training split once the
validation images are held out; an empty test or one-image training file), handwriting (fewer
training sequences than a batch); a step's batch of ``data.batch_size x train.accumulate_steps``
in each; and the whole path through ``hyperctl submit``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from tasks.handwriting.test_handwriting_data import seq, write_npz
from tasks.image_classification.test_image_job import idx_job
from tasks.translation.test_translation_job import translation_job

from service.driver.local import prepare
from service.exitcodes import EXIT_BAD_INPUT
from service.spec.errors import JobSpecError
from service.spec.loading import validate_job
from service.tasks import task_of

from helpers import hyperctl

TRAIN = "the cat sat on the mat.\nthe dog ate the hat.\n"


def problems(job: dict) -> str:
    spec = validate_job(job)
    with pytest.raises(JobSpecError) as err:
        prepare(spec, task_of(spec), lambda _: None)
    return str(err.value)


def char_job(tmp: Path, valid: str, test: str | None = None, batch_size: int = 4) -> dict:
    paths = {}
    for split, body in (("train", TRAIN), ("valid", valid), ("test", test)):
        if body is not None:
            (tmp / f"{split}.txt").write_text(body, encoding="utf-8")
            paths[split] = str(tmp / f"{split}.txt")
    return {
        "name": "t",
        "train": {"max_steps": 1},
        "data": {"dataset": None, **paths, "batch_size": batch_size, "eval_batch_size": 2},
        "storage": str(tmp / "runs"),
    }


def test_char_lm_one_symbol_splits_are_named(tmp_path: Path) -> None:
    """The issue's example: a validation split of one character crashed the first evaluation."""
    message = problems(char_job(tmp_path, valid="t", test="a"))
    valid = tmp_path / "valid.txt"
    assert f"data.valid: expected at least 2 symbols (a symbol and the one it predicts), {valid} has 1" in message
    assert "data.test: expected at least 2 symbols" in message


def test_char_lm_batch_needs_a_target_per_stream(tmp_path: Path) -> None:
    message = problems(char_job(tmp_path, valid="the cat.\n", batch_size=64))
    train = tmp_path / "train.txt"
    assert (
        f"data.batch_size: 64 streams need at least 65 training symbols (one target each), {train} has {len(TRAIN)}"
        in (message)
    )
    spec = validate_job(char_job(tmp_path, valid="the cat.\n", batch_size=len(TRAIN) - 1))
    prepare(spec, task_of(spec), lambda _: None)  # exactly enough: accepted


def test_translation_max_len_that_keeps_no_pair_is_named(tmp_path: Path) -> None:
    """The issue's example: a max_len that filters out every training pair was found in the
    workers, retried, and blamed data.batch_size."""
    message = problems(translation_job(tmp_path, max_len=2))
    assert "data.max_len: 0 of 300 training pairs fit data.max_len = 2" in message
    assert "data.batch_size" not in message


def test_translation_max_len_that_keeps_less_than_a_batch(tmp_path: Path) -> None:
    message = problems(translation_job(tmp_path, max_len=18, batch_size=64))
    assert "data.batch_size: 64 pairs per batch, but only 6 of 300 training pairs fit data.max_len = 18" in message


def test_image_splits_too_small_are_named(tmp_path: Path) -> None:
    message = problems(idx_job(tmp_path, n_train=12, valid_fraction=0.25, batch_size=10))
    assert (
        "data.batch_size: 10 images per batch, but the training split has 9 after data.valid_fraction = 0.25" in message
    )
    assert "data.test_images: expected at least 1 test images, found 0" in problems(idx_job(tmp_path, n_test=0))
    assert "data.train_images: expected at least 2 train images, found 1" in problems(idx_job(tmp_path, n_train=1))


def test_handwriting_batch_larger_than_the_training_split_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    strokes = write_npz(tmp_path / "s.npz", train=[seq(6, rng) for _ in range(3)], valid=[seq(5, rng)])
    job = {
        "name": "t",
        "task": "handwriting",
        "train": {"max_steps": 1},
        "data": {"path": strokes, "batch_size": 4},
        "storage": str(tmp_path / "runs"),
    }
    assert f"data.batch_size: 4 sequences a step, stroke3 {strokes} has 3 training sequences" in problems(job)
    job.update(data={"path": strokes, "batch_size": 2}, train={"max_steps": 1, "accumulate_steps": 2})
    message = f"data.batch_size x train.accumulate_steps (2 x 2): 4 sequences a step, stroke3 {strokes} has 3 training"
    assert message in problems(job)


def accumulating(job: dict, k: int) -> dict:
    job["train"] = {**job["train"], "accumulate_steps": k}
    return job


def test_a_step_of_accumulated_micro_batches_must_fit_the_data(tmp_path: Path) -> None:
    """Issue 14: the global batch of a step is data.batch_size x train.accumulate_steps; a split with
    a batch but not a step's worth is refused on the driver, naming both fields (the workers raised)."""
    # char_lm: 24 streams fit 45 symbols, 2 x 24 need 49
    message = problems(accumulating(char_job(tmp_path, valid="the cat.\n", batch_size=24), 2))
    train = tmp_path / "train.txt"
    assert (
        "data.batch_size x train.accumulate_steps (24 x 2): 48 streams need at least 49 training symbols "
        f"(one target each), {train} has {len(TRAIN)}"
    ) in message
    spec = validate_job(char_job(tmp_path, valid="the cat.\n", batch_size=24))
    prepare(spec, task_of(spec), lambda _: None)  # one micro-batch of 24: accepted
    # translation: 6 pairs fit max_len 18; a batch of 4 fits, 2 x 4 do not
    (tmp_path / "nmt").mkdir()
    message = problems(accumulating(translation_job(tmp_path / "nmt", max_len=18, batch_size=4), 2))
    assert (
        "data.batch_size x train.accumulate_steps (4 x 2): 8 pairs per batch, but only 6 of 300 training pairs fit "
        "data.max_len = 18"
    ) in message
    spec = validate_job(translation_job(tmp_path / "nmt", max_len=18, batch_size=4))
    prepare(spec, task_of(spec), lambda _: None)
    # image_classification: 9 training images after the validation quarter; 5 fit, 2 x 5 do not
    (tmp_path / "img").mkdir()
    message = problems(accumulating(idx_job(tmp_path / "img", n_train=12, valid_fraction=0.25, batch_size=5), 2))
    assert (
        "data.batch_size x train.accumulate_steps (5 x 2): 10 images per batch, but the training split has 9 after "
        "data.valid_fraction = 0.25"
    ) in message
    spec = validate_job(idx_job(tmp_path / "img", n_train=12, valid_fraction=0.25, batch_size=5))
    prepare(spec, task_of(spec), lambda _: None)


@pytest.mark.slow
def test_submit_refuses_before_any_mlflow_run(tmp_path: Path) -> None:
    """Through ``hyperctl submit`` (a local Ray instance is started): exit 2 naming the field, and
    no MLflow store, run or run folder written."""
    job = translation_job(tmp_path, max_len=2)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    r = hyperctl("submit", "job.yaml", "--num-cpus", "2", cwd=tmp_path)
    assert r.returncode == EXIT_BAD_INPUT, r.stdout + r.stderr
    assert "data.max_len: 0 of 300 training pairs fit data.max_len = 2" in r.stderr
    runs = tmp_path / "runs"
    assert not (runs / "mlflow.db").exists() and not (runs / job["name"]).exists()
