"""What N objects will cost, from a measured profile, before buying GPU time.

    python -m ray_jobs.cost_plan --config ray_jobs/configs/generate.yaml --n 100000 --profile profile.json
                            [--gpu-hour-usd 2.50] [--gpus 8] [--set key=value ...]

The profile is what ``python bench/bench_gpu.py`` writes on the GPU type you will rent. The plan uses
the profile's end-to-end figure (the real Ray job on that GPU, after start-up) when it has one, and
shows the bottom-up sum of the stages beside it: each stage's seconds per object x the GPU share its
worker holds (a fused group's members hold the group's share). ``--n`` counts accepted objects (the
samples you get); rejections cost GPU time too, so the items to request are ``n / accepted
fraction`` of the profiled run (the end-to-end rate already counts accepted objects only). It warns when the config's
steps or batch sizes differ from the profiled ones (the figures then do not apply).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass


@dataclass
class CostPlan:
    n: int
    requested: int
    gpu_type: str
    gpu_seconds_per_object_stages: dict
    gpu_hours_bottom_up: float
    gpu_hours_end_to_end: float | None
    objects_per_gpu_hour: float
    source: str
    accepted_fraction: float
    gpu_hours: float
    gpus: int
    wall_hours: float
    usd: float | None
    warnings: list

    def format(self) -> str:
        lines = [f"plan for {self.n:,} accepted objects ({self.requested:,} requested) on {self.gpu_type} "
                 f"(profile: {self.source})"]
        for name, s in self.gpu_seconds_per_object_stages.items():
            lines.append(f"  {name:<14} {s:8.3f} GPU-s/object")
        lines.append(f"  bottom-up (sum of stages): {self.gpu_hours_bottom_up:,.1f} GPU-hours")
        if self.gpu_hours_end_to_end is not None:
            lines.append(f"  end to end (measured Ray job): {self.gpu_hours_end_to_end:,.1f} GPU-hours")
        lines.append(f"throughput {self.objects_per_gpu_hour:,.0f} objects per GPU-hour; accepted fraction "
                     f"{self.accepted_fraction:.3f}")
        lines.append(f"total: {self.gpu_hours:,.1f} GPU-hours = {self.wall_hours:,.1f} h on {self.gpus} GPU(s)"
                     + (f" = ${self.usd:,.2f}" if self.usd is not None else " (set --gpu-hour-usd for $)"))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def cost_plan(cfg, n: int, profile: dict, gpu_hour_usd: float | None = None, gpus: int = 1) -> CostPlan:
    from mvboost.pipeline.units import build_units, gpu_shares, model_refs, stage_names

    units = build_units(cfg)
    share = gpu_shares(units)
    stages = profile.get("stages", {})
    warnings = []
    per_stage = {}
    profiled = profile.get("models")
    if profiled is None:
        warnings.append("the profile does not say which models it measured (made before bench_gpu recorded them): "
                        "check that its figures are for this config's models")
    for ref in model_refs(units):
        if profiled and profiled.get(ref.stage) and profiled[ref.stage] != ref.id:
            warnings.append(f"{ref.stage} was profiled with {profiled[ref.stage]} but this config uses {ref.id}: "
                            "its figures are for another model")
    for name in stage_names(units):
        if share.get(name, 0) <= 0:
            continue
        if name not in stages:
            warnings.append(f"stage {name} is not in the profile: the bottom-up figure leaves it out")
            continue
        per_stage[name] = stages[name]["s_per_object"] * share[name]
        want = {"steps": getattr(getattr(cfg, name), "steps", None),
                "batch_size": getattr(cfg, name).resources.batch_size}
        had = profile.get("settings", {}).get(name, {})
        for k, v in want.items():
            if k in had and had[k] != v:
                warnings.append(f"{name}.{k if k == 'steps' else 'resources.' + k} is {v} here but {had[k]} in the "
                                "profile: its figures do not apply")
    rejected = sum(s.get("rejected", 0) for s in stages.values())
    measured = profile.get("end_to_end") or {}
    if measured.get("n"):
        accepted_fraction = measured["accepted"] / measured["n"]
    else:
        objects = max(1, max((s.get("objects", 0) for s in stages.values()), default=0))
        accepted_fraction = 1.0 if not rejected else max(0.0, 1 - rejected / objects)
    accepted_fraction = max(accepted_fraction, 1e-9)
    bottom_up = n / accepted_fraction * sum(per_stage.values()) / 3600
    e2e_rate = measured.get("steady_objects_per_gpu_hour") or measured.get("objects_per_gpu_hour")
    if e2e_rate:
        # the measured rate counts accepted objects: requested objects pay for the rejected ones too
        end_to_end = n / e2e_rate
        steady = ", steady" if measured.get("steady_objects_per_gpu_hour") else ""
        rate, source = e2e_rate, "end-to-end Ray job" + steady
    else:
        end_to_end = None
        rate = 3600 * accepted_fraction / sum(per_stage.values()) if per_stage else 0.0
        source = "sum of stages (no end-to-end run in the profile)"
    if not rate:
        raise ValueError("the profile has no GPU stage timings and no end-to-end run")
    gpu_hours = end_to_end if end_to_end is not None else bottom_up
    return CostPlan(n=n, requested=math.ceil(n / accepted_fraction), gpu_type=profile.get("device", "?"),
                    gpu_seconds_per_object_stages=per_stage,
                    gpu_hours_bottom_up=bottom_up, gpu_hours_end_to_end=end_to_end, objects_per_gpu_hour=rate,
                    source=source, accepted_fraction=accepted_fraction, gpu_hours=gpu_hours, gpus=gpus,
                    wall_hours=gpu_hours / max(1, gpus),
                    usd=None if gpu_hour_usd is None else gpu_hours * gpu_hour_usd, warnings=warnings)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.cost_plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--n", type=int, required=True, help="objects to generate")
    p.add_argument("--profile", required=True, help="JSON written by bench/bench_gpu.py on the GPU type to rent")
    p.add_argument("--gpu-hour-usd", type=float, default=None, help="price of one GPU-hour (default: job.gpu_hour_usd)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs working at once (for the wall-clock time)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    a = p.parse_args(argv)
    from mvboost.config import ConfigError
    from mvboost.pipeline.job import load_job_config

    try:
        if a.n <= 0 or a.gpus <= 0:
            raise ConfigError("--n and --gpus must be positive")
        cfg = load_job_config(a.config, a.overrides)
        try:
            with open(a.profile) as f:
                profile = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read the profile {a.profile}: {e}") from e
        price = a.gpu_hour_usd if a.gpu_hour_usd is not None else (cfg.job.gpu_hour_usd or None)
        plan = cost_plan(cfg, a.n, profile, price, a.gpus)
    except (ConfigError, ValueError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                          for k, v in plan.__dict__.items()}, indent=1))
    else:
        print(plan.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
