"""A local Ray instance started by the service while another Ray instance runs on the machine.

Ray Train's placement-group cleaner (and anything else using Ray's state API inside the instance)
finds its instance by address; without one it gives up when it sees several instances, and a
campaign's finished trials then keep their CPUs reserved, so later trials wait forever. The
service's local instance tells its processes its address (RAY_ADDRESS), without changing the
environment of the process that started it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from service.driver.local import init_ray

pytestmark = pytest.mark.slow

OTHER_INSTANCE = (
    "import ray, time; ray.init(address='local', num_cpus=1, include_dashboard=False); "
    "print('up', flush=True); time.sleep(600)"
)


def test_state_api_inside_a_local_instance_with_another_instance_running() -> None:
    import ray

    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_INSTANCE],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "up"
        before = os.environ.get("RAY_ADDRESS")
        assert not ray.is_initialized()
        init_ray(num_cpus=1)
        try:
            assert os.environ.get("RAY_ADDRESS") == before  # the driver's environment is unchanged
            gcs = ray.get_runtime_context().gcs_address

            @ray.remote(num_cpus=0)
            def probe() -> tuple[str | None, int]:
                from ray.util.state import list_nodes

                return os.environ.get("RAY_ADDRESS"), len(list_nodes())

            deadline = time.monotonic() + 60
            while True:  # the dashboard (state API server) may take a moment after init
                try:
                    address, nodes = ray.get(probe.remote(), timeout=60)
                    break
                except ray.exceptions.RayTaskError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(2)
            assert address == gcs and nodes == 1
        finally:
            ray.shutdown()
    finally:
        other.kill()
        other.wait(timeout=30)
