"""One local Ray cluster for every test of this folder (starting one costs about 15 s).

The folder is not named `ray`: tests/ is on sys.path, and a folder of that name would be
imported as the `ray` package wherever ray is not installed.
"""
import logging
import os

import pytest

ray = pytest.importorskip("ray")  # the `ray` extra: .ci/run installs it


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU local cluster, stopped after the module's last test (not left idling through the rest of the suite)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the workers read it too (they inherit the environment)
    from lmql_lite.ray_batch import _worker_niceness
    with _worker_niceness():  # as `--ray` starts a local cluster: workers not niced below the machine's other work
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()
