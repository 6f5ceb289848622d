"""Ray: a head node with num_cpus=0 (it runs no tasks) and two worker nodes with
num_cpus=slots, each with its own raylet, started by ``ray.cluster_utils.Cluster`` on
127.0.0.1; the driver connects to the head. Throughput: ``ray.get`` of N ``noop.remote``
calls; latency: ``ray.get(noop.remote(i))`` one after another.

    bench/.venv-peers/bin/python bench/peers/ray_bench.py --subtasks 10000 --sequential 200
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Every address on 127.0.0.1: without this, ray.init resolves "127.0.0.1" in the
# head's address to the host's LAN address and waits for a GCS there.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import _common as common
import ray
from ray.cluster_utils import Cluster

NODE = {"node_ip_address": "127.0.0.1", "include_dashboard": False, "num_gpus": 0}


@ray.remote
def noop(x: int) -> int:
    return x


def main() -> None:
    args = common.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(**NODE, num_cpus=args.slots)
        ray.init(
            address=cluster.address,
            _node_ip_address="127.0.0.1",
            logging_level="ERROR",
            log_to_driver=False,
        )
        common.wait_for(
            "2 worker nodes", lambda: ray.cluster_resources().get("CPU", 0) >= 2 * args.slots, 60
        )
        # warm up: Ray starts worker processes lazily, one per CPU
        ray.get([noop.remote(i) for i in range(4 * args.slots)])

        def run_all(n: int) -> int:
            return len(ray.get([noop.remote(i) for i in range(n)]))

        result = {"peer": "ray", "version": ray.__version__, "subtasks": args.subtasks}
        result.update(common.throughput(run_all, args.subtasks))
        result.update(common.latency(lambda i: ray.get(noop.remote(i)), args.sequential))
        result["setup"] = (
            f"Cluster(): head num_cpus=0 + 2 worker nodes num_cpus={args.slots} "
            "(3 raylets, 1 GCS), driver on the head"
        )
        common.emit(result)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
