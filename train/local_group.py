"""The torch process group of a training run on the embedded local Ray, without a network listener.

Ray Train's ``TorchConfig`` rendezvous (``env://`` or ``tcp://``) starts a torch ``TCPStore`` on rank 0,
and torch binds that server to every interface (there is no bind-address option): the one listener of
a local training run reachable from the network. On one machine a file rendezvous needs no server, so
for local runs :class:`LocalTorchConfig` keeps Ray's ``TorchConfig`` (backend, timeout, the per-worker
CUDA context) and swaps its backend for :class:`FileRendezvousBackend`: a fresh ``file://`` store per
worker group (Ray builds a new group after a worker is lost), and gloo/NCCL told to use the loopback
interface for their own connections. Clusters keep Ray's ``TorchConfig`` unchanged.
"""
from __future__ import annotations

import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta

import ray
from ray.exceptions import GetTimeoutError
from ray.train.backend import Backend
from ray.train.torch import TorchConfig

log = logging.getLogger("train.local_group")


def loopback_interface() -> str | None:
    """Name of the interface that carries 127.0.0.1 ("lo" on Linux, "lo0" on macOS), or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == "127.0.0.1" for a in addrs):
            return name
    return None


def _join(backend: str, init_method: str, timeout_s: int) -> None:
    """Worker side: the torch launcher's environment variables, then the process group via the file store."""
    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    os.environ.update(LOCAL_RANK=str(ctx.get_local_rank()), LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()),
                      NODE_RANK=str(ctx.get_node_rank()), RANK=str(ctx.get_world_rank()),
                      WORLD_SIZE=str(ctx.get_world_size()))
    lo = loopback_interface()
    if lo:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", lo)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", lo)
    dist.init_process_group(backend=backend, init_method=init_method, rank=ctx.get_world_rank(),
                            world_size=ctx.get_world_size(), timeout=timedelta(seconds=timeout_s))


def _leave() -> None:
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class FileRendezvousBackend(Backend):
    share_cuda_visible_devices = True

    def on_start(self, worker_group, backend_config: "LocalTorchConfig"):
        backend = backend_config.backend or ("nccl" if worker_group.get_resources_per_worker().get("GPU", 0)
                                             else "gloo")
        self._store = store = os.path.join(tempfile.gettempdir(), f"mvboost-rendezvous-{uuid.uuid4().hex}")
        init_method = "file://" + store
        try:
            ray.get([worker_group.execute_single_async(i, _join, backend=backend, init_method=init_method,
                                                       timeout_s=backend_config.timeout_s)
                     for i in range(len(worker_group))])
        except BaseException:
            if os.path.exists(store):  # a group that failed to form: nobody uses its store
                os.unlink(store)
            raise
        # a formed group keeps using the store (new sub-groups) until on_shutdown

    def on_shutdown(self, worker_group, backend_config):
        try:
            ray.get(worker_group.execute_async(_leave), timeout=60)
        except GetTimeoutError:  # as Ray's own torch backend: a stuck shutdown is not a failed run
            log.warning("torch process group shutdown timed out after 60 s")
        finally:
            store = getattr(self, "_store", None)
            if store and os.path.exists(store):
                os.unlink(store)


@dataclass
class LocalTorchConfig(TorchConfig):
    """Ray's TorchConfig with the file rendezvous: for the embedded single-node Ray only."""

    @property
    def backend_cls(self):
        return FileRendezvousBackend
