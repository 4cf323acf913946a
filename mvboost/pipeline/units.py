"""Stage units: ``job.stages`` entries as operators (a stage, or a fused group run in one worker), built
from the config, with the GPU share each stage holds and the resources the layout check needs."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import ConfigError
from .stage import FusedStage, Stage

if TYPE_CHECKING:
    from .config import JobInfo


def _stage_registry():
    from ..stages import STAGES

    return STAGES


def stage_units(cfg) -> list[tuple[str, ...]]:
    """``job.stages`` as operators: each a tuple of stage names (one name, or a fused group)."""
    units = []
    for i, entry in enumerate(cfg.job.stages):
        if isinstance(entry, str):
            units.append((entry,))
        elif isinstance(entry, (list, tuple)) and entry and all(isinstance(x, str) for x in entry):
            units.append(tuple(entry))
        else:
            raise ConfigError(f"job.stages[{i}]: expected a stage name or a non-empty list of stage names "
                              f"(a fused group), got {entry!r}")
    return units


def flat_stages(cfg) -> list[str]:
    return [name for unit in stage_units(cfg) for name in unit]


def gpu_share(cfg) -> dict[str, float]:
    """Stage name -> the GPUs its worker holds (a fused group's members share their group's)."""
    return {name: float(getattr(cfg, unit[0]).resources.num_gpus) for unit in stage_units(cfg) for name in unit}


def build_unit(unit: tuple[str, ...], cfg, info: JobInfo) -> Stage | FusedStage:
    stages = _stage_registry()
    built = [stages[name](getattr(cfg, name), info) for name in unit]
    return built[0] if len(built) == 1 else FusedStage(built)


def build_units(cfg, info: JobInfo) -> list[Stage | FusedStage]:
    return [build_unit(u, cfg, info) for u in stage_units(cfg)]


def other_resources(res) -> dict[str, float]:
    """A stage's resources besides CPUs and GPUs, named as Ray's nodes report them: ``memory`` (bytes),
    ``accelerator_type:<T>`` (Ray asks 0.001 of it per worker), custom resources."""
    other = {str(k): float(v) for k, v in (res.custom or {}).items()}
    if res.memory:
        other["memory"] = float(res.memory)
    if res.accelerator_type:
        other[f"accelerator_type:{res.accelerator_type}"] = 0.001
    return other


def ray_resource_args(res) -> dict:
    """Keyword arguments of Ray Data's ``map_batches`` for a stage's memory, accelerator and custom resources."""
    args = {}
    if res.memory:
        args["memory"] = float(res.memory)
    if res.accelerator_type:
        args["accelerator_type"] = res.accelerator_type
    if res.custom:
        args["resources"] = {str(k): float(v) for k, v in res.custom.items()}
    return args


def layout_units(cfg) -> list:
    """The job's operators with their resources, for :func:`mvboost.pipeline.layout.check_layout`."""
    from .layout import Unit

    stages = _stage_registry()
    out = []
    for unit in stage_units(cfg):
        res = getattr(cfg, unit[0]).resources
        out.append(Unit("+".join(unit), res.num_gpus, res.num_cpus, res.min_actors,
                        any(stages[n].uses_actor for n in unit), other_resources(res)))
    return out


