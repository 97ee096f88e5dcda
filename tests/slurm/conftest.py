"""The `slurm` tests share one real single-node cluster (tests/slurm/cluster.py), started once per session.

When it cannot be started (not root and SLURM not installed, daemons that do not come up) every test here is
skipped with the reason: never a silent pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from slurm.cluster import ClusterUnavailable, SlurmCluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (ClusterUnavailable, OSError, TimeoutError) as err:
        pytest.skip(f"no SLURM cluster: {err}")
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)  # for the commands the tests run and what they start
    try:
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


@pytest.fixture(autouse=True)
def empty_queue(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts on an idle node and leaves nothing queued or running behind it."""
    yield
    if "slurm_cluster" in request.fixturenames:
        request.getfixturevalue("slurm_cluster").settle()
