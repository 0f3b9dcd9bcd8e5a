"""The Ray Train worker group a job asks for (``build_trainer``; the trainer is built, not run):
one GPU per worker and NCCL with ``resources.gpus_per_worker``, CPUs and gloo without, and the
spec (``train.precision`` with it) handed to every worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.driver.local import build_trainer
from service.spec.loading import validate_job


@pytest.mark.parametrize(
    "resources, precision, backend",
    [
        ({"workers": 2, "cpus_per_worker": 1}, "fp32", "gloo"),
        ({"workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 1}, "bf16", "nccl"),
        ({"workers": 4, "cpus_per_worker": 1, "gpus_per_worker": 0.5}, "fp16", "nccl"),
    ],
)
def test_workers_get_their_gpus_and_backend(tmp_path: Path, resources: dict, precision: str, backend: str) -> None:
    spec = validate_job(
        {
            "name": "g",
            "train": {"max_steps": 1, "precision": precision},
            "data": {"batch_size": 8},
            "resources": resources,
            "storage": str(tmp_path / "runs"),
        }
    )
    trainer = build_trainer(spec, str(tmp_path / "data"), f"sqlite:///{tmp_path / 'mlflow.db'}", "run-id")
    scaling = trainer.scaling_config
    gpus = resources.get("gpus_per_worker", 0)
    assert scaling.num_workers == resources["workers"]
    assert scaling.use_gpu == (gpus > 0)
    expected = {"CPU": resources["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}
    assert scaling.resources_per_worker == expected
    assert trainer.backend_config.backend == backend
    assert trainer.train_loop_config["spec"]["train"]["precision"] == precision


def test_known_ray_start_failures_become_one_line_with_what_to_do() -> None:
    from service.driver.jobs_api import ClusterError
    from service.driver.local import _ray_start_error

    timeout = RuntimeError("The current node timed out during startup. This could happen because ...\nmore")
    err = _ray_start_error(timeout, None)
    assert isinstance(err, ClusterError) and "\n" not in str(err)
    assert "did not start in time" in str(err) and "ray start --head" in str(err)
    refused = _ray_start_error(ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379"), "10.0.0.9:6379")
    assert isinstance(refused, ClusterError) and "no cluster answers at 10.0.0.9:6379" in str(refused)
    other = ValueError("something else")
    assert _ray_start_error(other, None) is other  # unknown failures are not disguised
