"""The evaluation job's library half (no Ray): which objects to score, the in-process loop over them with
:class:`~mvboost.eval.predict.EvalWorker`, and the summary (tables, header, report) from the per-object
records. ``ray_jobs/evaluate.py`` fans the same worker out over objects on Ray. Configuration and modes:
:mod:`mvboost.eval.config`."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..config import to_dict
from .config import EvalConfig, check_config, objects_root, parse_model
from .output import EvalOutput
from .predict import EvalWorker
from .protocol import Protocol


# ---- the objects to score, and the in-process executor --------------------------------------------------------------
@dataclass
class EvalObjects:
    """The objects of an evaluation run: the split's objects under ``root`` and those not yet scored."""

    root: str
    names: list[str]
    split: dict
    pending: list[str]


def select_objects(cfg: EvalConfig) -> EvalObjects:
    from .gso import list_objects, resolve_split

    check_config(cfg)
    root = objects_root(cfg)
    names, split = resolve_split(cfg.job.split, list_objects(root))
    out = EvalOutput(cfg.job.output)
    pending = [n for n in names if not out.done(n)]
    meta = {"config": to_dict(cfg), "split": split, "objects": names}
    out.write("eval.json", json.dumps(meta, indent=1).encode())
    return EvalObjects(root, names, split, pending)


def summary_header(cfg: EvalConfig, p: EvalObjects) -> dict:
    """What produced a table: mode, renderer, protocol (sha256 + the fields that differ from the default),
    split (name, count, sha256), and every model with its revision, resolved commit and adapter."""
    from ..assets.render import RENDERER

    proto = to_dict(cfg.protocol)
    default = to_dict(Protocol())
    models = []
    for spec in (parse_model(m, cfg.job.mode) for m in cfg.job.models):
        rec = {"name": spec.name, "backend": spec.backend}
        if cfg.job.mode == "ply":
            rec["id"] = spec.source
        else:
            from ..models.hub import model_record

            rec.update(model_record(spec.source, spec.revision, what=spec.name, adapter=spec.lora))
        models.append(rec)
    return {"mode": cfg.job.mode, "renderer": RENDERER,
            "protocol": {"sha256": hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest(),
                         "differs_from_default": {k: v for k, v in proto.items() if default.get(k) != v}},
            "split": p.split, "objects_root": p.root, "models": models}


def finish(cfg: EvalConfig, p: EvalObjects) -> dict:
    """Summary tables and the report from the per-object records."""
    from .summary import summarise, write_summary

    out = EvalOutput(cfg.job.output)
    records = [r for r in (out.record(n) for n in p.names) if r is not None]
    summary = summarise(records, [parse_model(m, cfg.job.mode).name for m in cfg.job.models], cfg.job.bootstrap,
                        cfg.job.seed, header=summary_header(cfg, p))
    summary["split"] = p.split
    write_summary(out, summary)
    if cfg.job.report:
        from .report import eval_report

        out.write("report.html", eval_report(out, records, summary).encode())
    return summary


def run_in_process(cfg: EvalConfig, progress=None) -> dict:
    p = select_objects(cfg)
    if p.pending:
        worker = EvalWorker(cfg, p.root)
        for name in p.pending:
            worker([name])
            if progress:
                progress.update(1)
    return finish(cfg, p)
