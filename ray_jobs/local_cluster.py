"""A multi-node Ray cluster on one machine: a head without GPUs and worker nodes that declare them.

    python -m ray_jobs.local_cluster --workers 3 [--worker-gpus 1 --worker-cpus 2 --resources '{"mvboost_gpu": 1}']

Each node is its own raylet with its own object store (``ray.cluster_utils.Cluster``), every listener on the
loopback interface, token authentication as in production (``RAY_AUTH_MODE=token``; the token file is printed
with the address). The head declares no GPU (it runs the driver's light work and the GCS); worker nodes declare
``--worker-gpus`` fake GPUs (torch sees none and runs on the CPU, but Ray schedules exactly as on GPU nodes) and
the node group's custom resources (``cluster/aws.yaml``: ``mvboost_gpu``). Jobs join with ``RAY_ADDRESS`` and
``RAY_AUTH_TOKEN_PATH`` set (and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which keeps a driver's address on
loopback; :attr:`LocalCluster.env` has all three).

It prints one JSON line (address, token file, nodes), then reads commands on stdin, one per line, each answered
with one JSON line: ``nodes``; ``kill <node id>`` (SIGKILL to the node's raylet and its workers: a lost spot
node); ``add`` (a new worker node, the replacement); ``stop``. End of input stops the cluster.
:class:`LocalCluster` drives it from Python (tests, ``bench/bench_cluster.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

#: Node loss is noticed within ~3 s instead of Ray's default ~30 s (GCS health checks of the raylets); metrics are
#: exported every second as on the embedded local Ray (a job's final export waits for one interval)
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                 "health_check_failure_threshold": 3, "metrics_report_interval_ms": 1000}


def _serve(a) -> int:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # node addresses stay on loopback (see local_ray)
    if a.token_file:
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=a.token_file)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    from ray.cluster_utils import Cluster

    from ray_jobs.reaper import start_reaper

    start_reaper()  # killed without "stop", this process leaves no raylet, GCS or worker behind

    resources = json.loads(a.resources)
    common = {"node_ip_address": "127.0.0.1", "include_dashboard": False,
              "object_store_memory": int(a.object_store_mb * 2 ** 20)}
    head = {**common, "num_cpus": a.head_cpus, "num_gpus": 0, "_system_config": SYSTEM_CONFIG}
    if a.dashboard_port:  # the dashboard (Ray's state API) on loopback
        head.update(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=a.dashboard_port)
    cluster = Cluster(initialize_head=True, head_node_args=head)
    workers = {}

    def add():
        node = cluster.add_node(**common, num_cpus=a.worker_cpus, num_gpus=a.worker_gpus, resources=resources)
        workers[node.node_id] = node
        return node.node_id

    for _ in range(a.workers):
        add()
    cluster.wait_for_nodes()

    def nodes():
        return {"head": cluster.head_node.node_id, "workers": sorted(workers)}

    print(json.dumps({"address": cluster.address, "token_file": a.token_file, **nodes()}), flush=True)
    try:
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "nodes":
                print(json.dumps(nodes()), flush=True)
            elif cmd == "kill" and arg in workers:
                cluster.remove_node(workers.pop(arg), allow_graceful=False)
                print(json.dumps({"killed": arg}), flush=True)
            elif cmd == "add":
                node_id = add()
                cluster.wait_for_nodes()
                print(json.dumps({"added": node_id}), flush=True)
            elif cmd == "stop":
                break
            else:
                print(json.dumps({"error": f"unknown command or node: {line.strip()!r}"}), flush=True)
    finally:
        cluster.shutdown()
    return 0


class LocalCluster:
    """``with LocalCluster(workers=3, token_file=…) as c:`` -> ``c.address``, ``c.env`` (for jobs), ``c.workers``,
    ``c.kill(node_id)``, ``c.add()``."""

    def __init__(self, workers: int = 3, worker_gpus: float = 1, worker_cpus: float = 2, head_cpus: float = 1,
                 resources: dict | None = None, token_file: str | Path | None = None, object_store_mb: int = 150,
                 log: str | Path | None = None, dashboard_port: int = 0):
        self.args = ["--workers", str(workers), "--worker-gpus", str(worker_gpus), "--worker-cpus", str(worker_cpus),
                     "--head-cpus", str(head_cpus), "--resources", json.dumps(resources or {}),
                     "--object-store-mb", str(object_store_mb)]
        if token_file:
            self.args += ["--token-file", str(token_file)]
        if dashboard_port:
            self.args += ["--dashboard-port", str(dashboard_port)]
        self.token_file, self.log = token_file, log

    def __enter__(self):
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        err = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.local_cluster", *self.args],
                                     cwd=Path(__file__).resolve().parents[1], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        info = self._read()
        self.address, self.head, self.workers = info["address"], info["head"], list(info["workers"])
        return self

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the local cluster exited ({self.proc.poll()}); see {self.log or 'its stderr'}")
        return json.loads(line)

    def _ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    @property
    def env(self) -> dict:
        """Environment for a job (or ``ray`` CLI) that joins this cluster."""
        # a driver on this machine keeps the loopback address too (else Ray resolves 127.0.0.1 to the outside one)
        env = dict(os.environ, RAY_ADDRESS=self.address, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        if self.token_file:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))
        return env

    def kill(self, node_id: str) -> None:
        out = self._ask(f"kill {node_id}")
        if "error" in out:
            raise ValueError(out["error"])
        self.workers.remove(node_id)

    def add(self) -> str:
        node_id = self._ask("add")["added"]
        self.workers.append(node_id)
        return node_id

    def __exit__(self, *exc):
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
            self.proc.wait(120)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.local_cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--worker-gpus", type=float, default=1)
    p.add_argument("--worker-cpus", type=float, default=2)
    p.add_argument("--head-cpus", type=float, default=1)
    p.add_argument("--resources", default="{}", help="custom resources of every worker node, JSON")
    p.add_argument("--object-store-mb", type=float, default=150)
    p.add_argument("--token-file", help="token authentication with this token file (created if missing)")
    p.add_argument("--dashboard-port", type=int, default=0, help="start the dashboard on 127.0.0.1:<port> (0: none)")
    a = p.parse_args(argv)
    if a.token_file and not Path(a.token_file).is_file():
        import secrets

        Path(a.token_file).write_text(secrets.token_hex(32))
        os.chmod(a.token_file, 0o600)
    return _serve(a)


if __name__ == "__main__":
    sys.exit(main())
