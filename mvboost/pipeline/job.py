"""The generation job without Ray, by concern (this module re-exports the public names):

=====================  ======================================================================
``pipeline.config``    sections, the generated JobConfig, load/validate, job_meta
``pipeline.units``     job.stages as operators (stages, fused groups), their resources
``pipeline.plan``      prompts -> the deterministic item plan
``pipeline.tracker``   the driver's state: resume, shard tracking and commits, the result consumer
``pipeline.summary``   the run summary
``pipeline.runner``    the in-process executor
=====================  ======================================================================
"""
from .config import JobConfig, JobInfo, JobSection, PromptsSection, RaySection, job_meta, load_job_config, validate
from .plan import item_seed, load_prompts, plan_items
from .runner import iter_batches, run_in_process
from .summary import RunSummary
from .tracker import RESULT_COLUMNS, JobState, ShardTracker
from .units import build_unit, build_units, flat_stages, gpu_share, layout_units, stage_units

__all__ = ["JobConfig", "JobInfo", "JobSection", "PromptsSection", "RaySection", "job_meta", "load_job_config",
           "validate", "item_seed", "load_prompts", "plan_items", "iter_batches", "run_in_process", "RunSummary",
           "RESULT_COLUMNS", "JobState", "ShardTracker", "build_unit", "build_units", "flat_stages", "gpu_share",
           "layout_units", "stage_units"]
