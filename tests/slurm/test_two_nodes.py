"""DDP across two SLURM nodes: a 2-node job (one CPU process per node, gloo) through the SLURM launcher, on a real
two-node cluster (tests/slurm/two_nodes.py), computes what the 1-node 2-process job computes. And, with no
cluster, the environment Lightning reads in each task of such a job, as our launcher sizes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lightning_fabric.plugins.environments import SLURMEnvironment
from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from conftest import needs_extra, run_cli
from slurm.cluster import ClusterUnavailable
from slurm.two_nodes import TwoNodeCluster
from transferlab.runner import build_trainer

# One CPU and one thread per task: both jobs compute with the same kernels in the same order.
JOB = ["-m", "hydra/launcher=slurm", "debug=tiny", "hydra.launcher.cpus_per_task=1", "trainer=ddp_sim", "seed=0"]
TWO_NODES = ["trainer.devices=1", "trainer.num_nodes=2"]  # ddp_sim's default: devices=2 on num_nodes=1


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodeCluster]:
    """The cluster for this module's tests; torn down (jobs, daemons, namespaces, links) however they end."""
    needs_extra("slurm")
    cluster = TwoNodeCluster(tmp_path_factory.mktemp("two_nodes"))
    with pytest.MonkeyPatch.context() as env:
        try:
            cluster.start()
        except (ClusterUnavailable, OSError, TimeoutError) as err:
            cluster.stop()
            pytest.skip(" ".join(f"no two-node SLURM cluster: {err}".split()))  # one line
        env.setenv("SLURM_CONF", str(cluster.conf))  # for the commands the tests run and what they start
        try:
            yield cluster
        finally:
            cluster.stop()


def slurm_job(sweep: Path) -> str:
    """The SLURM job id of a one-job sweep (its submitit folder)."""
    (job,) = [p.name for p in (sweep / ".submitit").iterdir() if p.is_dir()]
    return job


def task_hosts(sweep: Path, job: str) -> dict[int, tuple[str, int]]:
    """global rank → (host name, node rank) of every task, as submitit logged them in each task's log."""
    pattern = r"JobEnvironment\(job_id=\d+, hostname=(\S+), local_rank=\d+\(\d+\), node=(\d+)\(\d+\), global_rank=(\d+)"
    tasks = {}
    for log in (sweep / ".submitit" / job).glob("*_log.out"):
        host, node, rank = re.search(pattern, log.read_text()).groups()
        tasks[int(rank)] = (host, int(node))
    return tasks


@pytest.mark.slurm
@pytest.mark.slow
def test_a_two_node_job_computes_what_the_one_node_job_does(
    two_node_cluster: TwoNodeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # SLURM jobs inherit the submitting environment
    runs = {}
    for name, overrides in (("two_nodes", TWO_NODES), ("one_node", [])):
        sweep = tmp_path / name
        result = run_cli("tl-train", *JOB, *overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
        job = slurm_job(sweep)
        fields = two_node_cluster.finished(job)
        assert fields["JobState"] == "COMPLETED", fields
        (metrics,) = sweep.rglob("metrics.json")
        runs[name] = (fields, task_hosts(sweep, job), json.loads(metrics.read_text())["metrics"])

    (two, two_tasks, two_metrics), (one, one_tasks, one_metrics) = runs["two_nodes"], runs["one_node"]
    # One task on each node, ranks from SLURM: rank 1 ran on node2 as node rank 1 (its own network namespace,
    # so its gloo connections to rank 0 crossed the bridge between the nodes).
    assert (two["NumNodes"], two["NumTasks"], two["NodeList"]) == ("2", "2", "node[1-2]")
    assert two_tasks == {0: ("node1", 0), 1: ("node2", 1)}
    assert (one["NumNodes"], one["NumTasks"]) == ("1", "2")
    assert {host for host, _ in one_tasks.values()} == {one["NodeList"]}

    # Tolerance 0: the same two shards (DistributedSampler and the per-rank augmentation streams depend on the
    # global rank and world size only), one thread each, and gloo's all-reduce of two gradients is one float
    # addition, the same in either order. Only timings differ.
    def compared(metrics: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if not k.startswith("time/")}

    assert compared(two_metrics) == compared(one_metrics)
    assert {"train/loss", "val/loss", "test/loss"} <= compared(two_metrics).keys()


@pytest.mark.parametrize("rank", [0, 1])
def test_each_task_of_a_two_node_job_gets_its_ranks_and_the_first_node_as_master(
    make_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, rank: int
) -> None:
    """What srun gives task `rank` of the job our launcher asks for (--nodes, --ntasks-per-node from the trainer),
    and what Lightning makes of it: node rank from SLURM_NODEID, global rank from SLURM_PROCID, world size from
    SLURM_NTASKS, and the master address from the first host of SLURM_NODELIST (every rank the same)."""
    cfg = make_cfg("hydra/launcher=slurm", "trainer=ddp_sim", *TWO_NODES)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node) == (2, 1)
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "RANK"):
        monkeypatch.setenv(name, "")  # so that what Lightning sets (MASTER_ADDR, MASTER_PORT) is undone after
        monkeypatch.delenv(name)
    for flag in (rank_zero_only, utils_rank_zero_only):  # the trainer sets the process-wide rank to `rank`
        monkeypatch.setattr(flag, "rank", getattr(flag, "rank", 0))
    node = rank // launcher.tasks_per_node
    srun = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": launcher.name,  # a job named "bash" or "interactive" would not count as a SLURM job
        "SLURM_NNODES": str(launcher.nodes),
        "SLURM_NTASKS": str(launcher.nodes * launcher.tasks_per_node),
        "SLURM_NTASKS_PER_NODE": str(launcher.tasks_per_node),
        "SLURM_NODELIST": "node[1-2]",
        "SLURM_NODEID": str(node),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % launcher.tasks_per_node),
    }
    for name, value in srun.items():
        monkeypatch.setenv(name, value)

    trainer = build_trainer(cfg, [], [])
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 1, 2)
    assert (trainer.node_rank, trainer.global_rank, trainer.local_rank) == (node, rank, 0)
    assert environment.main_address == "node1"
    assert environment.main_port == 15000 + 4242  # from the job id: the same on every node
