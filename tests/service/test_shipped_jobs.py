"""Every job and campaign shipped in jobs/ validates as it is, and its model builds."""

from __future__ import annotations

import pytest

from hypermodels import variable_count
from service.spec.loading import load_job
from service.tasks import task_of
from service.tasks.image_classification.model import build_model as build_image_model
from service.tasks.image_classification.spec import ImageJob

from helpers import ROOT

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


def test_jobs_folder_is_not_empty():
    assert len(JOBS) >= 15


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.stem)
def test_shipped_job_validates_and_builds(path):
    spec = load_job(path)
    assert spec.name
    assert task_of(spec).parameter_count(spec) > 0


@pytest.mark.parametrize("kernels, variables", [("hyper", 147_578), ("plain", 2_235_498)])
def test_cifar_wrn_jobs_build_the_papers_40_2(kernels, variables):
    spec = load_job(ROOT / "jobs" / f"cifar10-wrn-40-2-{kernels}.yaml")
    assert isinstance(spec, ImageJob)
    assert variable_count(build_image_model(spec, (3, 32, 32), 10)) == variables
