"""Nested dataclass configs loaded from YAML: unknown keys are errors, ``--set a.b=c`` overrides."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the offending key."""


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value, tp, where: str):
    tp = _strip_optional(tp)
    if value is None:
        return None
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError as e:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from e
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from e
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join((where + '.' if where else '') + k for k in unknown)}; "
                          f"valid keys{' of ' + where if where else ''}: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=c`` overrides (values parsed as YAML scalars) to a nested dict."""
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


def absolute_path(url: str, key: str = "", cwd: str | None = None) -> str:
    """A local path made absolute (``~`` expanded, against ``cwd``); a URL unchanged. With ``key`` (the config key
    of a path the job writes to), a relative path inside Ray's copy of a submitted working directory is refused:
    what the job wrote there would land in Ray's session cache, which Ray deletes."""
    import os

    if "://" in str(url):
        return str(url)
    cwd = cwd or os.getcwd()
    path = os.path.abspath(os.path.join(cwd, os.path.expanduser(str(url))))
    if key and not os.path.isabs(os.path.expanduser(str(url))) and "/runtime_resources/working_dir_files/" in cwd:
        raise ConfigError(f"{key} {url!r} is relative and this job runs in Ray's copy of the working directory "
                          f"({cwd}): what it writes would land in Ray's session cache and be deleted with it. Pass "
                          "--output with an absolute path on shared storage or a URL (s3://…, gs://…)")
    return path


@dataclass
class RaySection:
    """How a job reaches Ray (the generation, evaluation and training jobs share it)."""

    address: str | None = None  # None: start a local Ray on 127.0.0.1; "auto" or ray://…: connect
    num_cpus: int | None = None  # for the local Ray only
    num_gpus: float | None = None  # for the local Ray only (fake GPUs schedule, torch still uses the CPU)
    max_tasks_in_flight_per_actor: int = 2
    # stop a run in which nothing moved for this long (Ray Data's execution_no_progress_timeout_s), e.g. waiting
    # for GPU capacity that never comes; 0: Ray Data's default (30 min in Ray 2.60); -1: wait forever
    no_progress_timeout_s: float = 0.0
    # refuse at start a layout whose actor pools cannot all start on the cluster's nodes:
    # auto = on for the embedded local Ray (fixed size), a warning on a cluster (an autoscaler may add nodes)
    check_layout: str = "auto"  # auto | strict | warn | off
    # the generation job's metrics on a fixed loopback port for the embedded local Ray (0: not served), with
    # Prometheus's service discovery file in Ray's temp folder; on a cluster, Prometheus scrapes the nodes
    metrics_port: int = 0
    # at the end, wait at most this long for the final counts to reach the node's metrics endpoint (and, with
    # metrics_port, for a scrape to read them)
    metrics_wait_s: float = 30.0
