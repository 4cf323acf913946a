"""The generation job without Ray, by concern (this module re-exports the public names):

=====================  ======================================================================
``pipeline.config``    sections, the generated JobConfig, load/validate, job_meta
``pipeline.units``     job.stages built into operators (stages, fused groups) that carry their names,
                       resources, GPU share and model references
``pipeline.items``      prompts -> the deterministic item plan
``pipeline.state``   the driver's state: resume, shard tracking and commits, the result consumer
``pipeline.summary``   the run summary
``pipeline.runner``    the in-process executor
=====================  ======================================================================
"""
from .config import JobConfig, JobSection, PromptsSection, job_meta, load_job_config, validate
from .items import item_seed, load_prompts, plan_items
from .runner import iter_batches, run_in_process
from .state import JobState, ShardTracker
from .summary import RunSummary
from .units import build_units, gpu_shares, layout_units, model_refs, stage_names

__all__ = ["JobConfig", "JobSection", "PromptsSection", "job_meta", "load_job_config", "validate", "item_seed",
           "load_prompts", "plan_items", "iter_batches", "run_in_process", "RunSummary", "JobState", "ShardTracker",
           "build_units", "gpu_shares", "layout_units", "model_refs", "stage_names"]
