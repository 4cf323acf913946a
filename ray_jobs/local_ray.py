"""Connecting the jobs to Ray: a cluster when one is named, else an embedded single-node Ray on loopback.

One owner for what every job (generation, evaluation, training) does before its Ray work:

- ``RAY_ADDRESS`` / a configured address: join that cluster (``ray job submit`` sets it); workers get
  :func:`worker_env` through the runtime environment.
- Nothing named: start a local Ray whose every listener (GCS, raylet, object manager, core workers,
  dashboard and runtime-env agents) is bound to the loopback interface, so nothing of it is reachable
  from the network. Ray resolves ``_node_ip_address="127.0.0.1"`` to the machine's outside address
  (``services.resolve_ip_for_localhost``); its single-node mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
  the mode it uses on macOS/Windows) keeps the node address on loopback instead, and Ray ≥ 2.60 binds
  each server to the node address. That mode is set only while the local Ray starts (its processes
  inherit it) and is put back afterwards, so a later ``ray start --address …`` from the same process is
  unaffected. A watchdog (:mod:`ray_jobs.reaper`) kills every process the local Ray started (they
  carry the driver's tag in their environment) the moment the driver exits, even by kill -9.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: how often the local Ray's processes export their metrics (Ray's default: 10 s), so a job's last counts
#: reach the endpoint within a second of its end
LOCAL_REPORT_INTERVAL_MS = 1000
FORWARDED_ENV = ("MVBOOST_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "TORCH_HOME", "TORCH_EXTENSIONS_DIR")
#: Ray Train's placement-group cleaner asks the State API (served by the dashboard) once a second whether the
#: training controller is alive; the embedded Ray runs without a dashboard, so every ask fails with this warning
STATE_API_WARNING = "State API may be temporarily unavailable"


def worker_env() -> dict[str, str]:
    """Environment for Ray workers: the repository on PYTHONPATH plus the caches and offline switches."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    for var in FORWARDED_ENV:
        if var in os.environ:
            env[var] = os.environ[var]
    return env


def quiet_without_dashboard() -> None:
    """Worker setup hook of the embedded Ray (no dashboard, hence no State API): drop Ray Train's once-a-second
    warning that the State API cannot be reached. The cleaner that logs it only matters if the controller dies
    while its driver lives; the embedded Ray and every placement group in it end with the driver anyway."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return STATE_API_WARNING not in record.getMessage()

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").addFilter(_Drop())


def job_runtime_env() -> dict:
    """The runtime env a job was submitted with (``ray job submit --runtime-env-json``, a RayJob's
    ``runtimeEnvYAML``), which Ray hands the driver in ``RAY_JOB_CONFIG_JSON_ENV_VAR``; {} outside a job."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def merge_runtime_env(ours: dict, job: dict) -> tuple[dict, list[str]]:
    """Our runtime env minus what the job's own sets, so Ray's merge of the two never refuses: the job's values
    win for every key both set (per variable for ``env_vars``; whole keys such as ``working_dir``,
    ``py_modules`` or ``pip``). Returns (what to pass to ``ray.init``, the names whose values differed)."""
    merged, differ = {}, []
    job_vars = job.get("env_vars") or {}
    for key, value in ours.items():
        if key == "env_vars":
            keep = {k: v for k, v in value.items() if k not in job_vars}
            differ += sorted(k for k, v in value.items() if k in job_vars and str(job_vars[k]) != str(v))
            if keep:
                merged["env_vars"] = keep
        elif key in job:
            if job[key] != value:
                differ.append(key)
        else:
            merged[key] = value
    return merged, differ


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``), or start the embedded loopback-only Ray. True when local.

    A Ray already initialised in this process is used as it is. A cluster that cannot be reached is a
    :class:`mvboost.config.ConfigError` (one ``error:`` line in the CLIs), not a traceback.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return not address
    runtime_env, differ = merge_runtime_env({"env_vars": worker_env()}, job_runtime_env())
    if differ:  # names only: values may be secrets
        print(f"runtime env: the job's own values win for {', '.join(differ)}", flush=True)
    if address:
        from mvboost.config import ConfigError

        why = unreachable(address)
        if why:  # Ray itself would retry for minutes
            raise ConfigError(f"cannot connect to the Ray cluster at {address}: {why}")
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:  # unreachable, refused, bad address
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"cannot connect to the Ray cluster at {address}: {type(e).__name__}: {first}") from None
        return False
    from ray_jobs.reaper import start_reaper

    start_reaper()  # nothing of the local Ray outlives a killed driver
    runtime_env.setdefault("worker_process_setup_hook", f"{__name__}.quiet_without_dashboard")
    with _single_node():
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env=runtime_env,
                 _system_config={"metrics_report_interval_ms": LOCAL_REPORT_INTERVAL_MS})
    return True


def unreachable(address: str, timeout_s: float = 10.0) -> str | None:
    """Why a ``host:port`` GCS address cannot be reached (TCP connect), or None; other forms ("auto",
    ``ray://``, ``http://``) are left to Ray, which fails fast on them."""
    import socket

    if "://" in address or address == "auto" or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except ValueError:
        return f"not host:port (port {port!r})"
    except OSError as e:
        return f"nothing answers there ({type(e).__name__}: {e.strerror or e})"


class _single_node:
    """Ray's single-node mode for the duration of a local start: node address = loopback."""

    def __enter__(self):
        from ray._private import ray_constants

        self._constants = ray_constants
        self._old_env = os.environ.get(SINGLE_NODE_ENV)
        self._old_flag = ray_constants.ENABLE_RAY_CLUSTER
        os.environ[SINGLE_NODE_ENV] = "0"  # the processes Ray starts now read it at import
        ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray already
        return self

    def __exit__(self, *exc):
        self._constants.ENABLE_RAY_CLUSTER = self._old_flag
        if self._old_env is None:
            os.environ.pop(SINGLE_NODE_ENV, None)
        else:
            os.environ[SINGLE_NODE_ENV] = self._old_env
        return False
