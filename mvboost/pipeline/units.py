"""Stage units: ``job.stages`` built into operators (a stage, or a fused group run in one worker).

:func:`build_units` is the one reader of ``job.stages``. A built unit carries what the executors,
the layout check, the metrics and the run summary need (``names``, ``resources``, ``gpu_share``,
``model_refs``, ``uses_actor``), so nothing else parses the stage list again.
"""
from __future__ import annotations

from ..config import ConfigError
from ..stages import STAGES
from ..stages.base import FusedStage, ModelRef, Stage
from .layout import Demand

Unit = Stage | FusedStage


def _entry_names(i: int, entry) -> tuple[str, ...]:
    if isinstance(entry, str):
        names: tuple[str, ...] = (entry,)
    elif isinstance(entry, (list, tuple)) and entry and all(isinstance(x, str) for x in entry):
        names = tuple(entry)
    else:
        raise ConfigError(f"job.stages[{i}]: expected a stage name or a non-empty list of stage names "
                          f"(a fused group), got {entry!r}")
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise ConfigError(f"job.stages: unknown stage(s) {unknown}; available: {sorted(STAGES)}")
    return names


def build_units(cfg) -> list[Unit]:
    """Each ``job.stages`` entry built into its operator (setup() not yet run, so cheap and picklable; the
    job's :class:`JobInfo` is given later with ``bind``). A malformed entry, an unknown stage or a stage
    listed twice is a :class:`ConfigError`."""
    entries = [_entry_names(i, e) for i, e in enumerate(cfg.job.stages)]
    flat = [n for names in entries for n in names]
    dup = sorted({s for s in flat if flat.count(s) > 1})
    if dup:
        raise ConfigError(f"job.stages: stage(s) {dup} listed more than once")
    units: list[Unit] = []
    for names in entries:
        built = [STAGES[n](getattr(cfg, n)) for n in names]
        units.append(built[0] if len(built) == 1 else FusedStage(built))
    return units


def stage_names(units: list[Unit]) -> list[str]:
    """Every stage of the job, in order (fused groups flattened)."""
    return [n for u in units for n in u.names]


def gpu_shares(units: list[Unit]) -> dict[str, float]:
    """Stage name -> the GPUs its worker holds (a fused group's members share their group's)."""
    return {name: u.gpu_share for u in units for name in u.names}


def model_refs(units: list[Unit]) -> list[ModelRef]:
    """The models the job loads, one per stage that has one, in stage order."""
    return [ref for u in units for ref in u.model_refs]


def other_resources(res) -> dict[str, float]:
    """A stage's resources besides CPUs and GPUs, named as Ray's nodes report them: ``memory`` (bytes),
    ``accelerator_type:<T>`` (Ray asks 0.001 of it per worker), custom resources."""
    other = {str(k): float(v) for k, v in (res.custom or {}).items()}
    if res.memory:
        other["memory"] = float(res.memory)
    if res.accelerator_type:
        other[f"accelerator_type:{res.accelerator_type}"] = 0.001
    return other


def layout_units(units: list[Unit]) -> list[Demand]:
    """The job's operators with their resources, for :func:`mvboost.pipeline.layout.check_layout`."""
    return [Demand(u.name, u.resources.num_gpus, u.resources.num_cpus, u.resources.min_actors, u.uses_actor,
                   other_resources(u.resources)) for u in units]
