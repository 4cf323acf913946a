"""Ray Data's side of a stage unit, one owner: the ``map_batches`` arguments a unit's declared resources become,
and the conversion between Ray's numpy column batches and the library's column batches (lists of Python values).

The library (:mod:`mvboost.stages`, :mod:`mvboost.pipeline`) only describes resources and works on plain
columns; nothing there knows Ray.
"""
from __future__ import annotations

import numpy as np


def resource_args(res) -> dict:
    """``map_batches`` keyword arguments for a unit's memory, accelerator type and custom resources."""
    args = {}
    if res.memory:
        args["memory"] = float(res.memory)
    if res.accelerator_type:
        args["accelerator_type"] = res.accelerator_type
    if res.custom:
        args["resources"] = {str(k): float(v) for k, v in res.custom.items()}
    return args


def map_batches_args(res) -> dict:
    """Every ``map_batches`` resource argument of a unit: batch size, CPUs, GPUs (actor pools only ask for them
    when they have some), memory, accelerator type, custom resources."""
    return {"batch_size": res.batch_size, "num_cpus": res.num_cpus,
            **({"num_gpus": res.num_gpus} if res.num_gpus else {}), **resource_args(res)}


def from_ray(batch: dict) -> dict:
    """A Ray numpy batch -> the library's column batch (column -> list)."""
    return {k: list(v) for k, v in batch.items()}


def to_ray(batch: dict) -> dict:
    """The library's column batch -> a Ray numpy batch: numeric columns as arrays, the others (bytes, strings,
    None) as object arrays, so Arrow keeps them as they are."""
    out = {}
    for k, v in batch.items():
        if all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) for x in v):
            out[k] = np.asarray(v)
        else:
            arr = np.empty(len(v), dtype=object)
            arr[:] = v
            out[k] = arr
    return out
