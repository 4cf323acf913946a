"""GSO evaluation as a Ray job: base vs boosted LGM (or any method's PLYs) under one protocol.

    python -m ray_jobs.evaluate --config ray_jobs/configs/evaluate_smoke.yaml --output outputs/eval
    python -m ray_jobs.evaluate --config ray_jobs/configs/evaluate.yaml --objects s3://bucket/gso \\
        --split gso300 --output s3://bucket/eval/v1 --model base=ashawkey/LGM --model boosted=ashawkey/LGM+<adapter>

Objects fan out over an actor pool of evaluation workers (``worker`` resources; each loads the models
once and scores whole objects: GT renders, predictions, metrics, exports, the per-object JSON last).
A rerun skips objects already scored; failures are recorded per object with the reason. The driver
writes ``summary.md/.csv/.json`` and ``report.html``. ``--in-process`` runs the same worker without Ray.
"""
from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv=None):
    from mvboost.eval.config import MODES

    p = argparse.ArgumentParser(prog="python -m ray_jobs.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--objects", help="a GSO folder (any fsspec URL) or 'fixtures'")
    p.add_argument("--split", help="gso300 | gso30 | all | a file with one object name per line")
    p.add_argument("--output")
    p.add_argument("--mode", choices=list(MODES))
    p.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE",
                   help="name=<LGM id or folder>[@revision][+<LoRA adapter>] (single, gt4, gt_ortho), "
                        "name=openlrm:<folder | id | tiny> (single, thumbnail) or name=<PLY folder> (ply); "
                        "repeat for several models (the first is the baseline of the paired differences)")
    p.add_argument("--in-process", action="store_true", help="no Ray: evaluate objects one by one in this process")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def load(args):
    import json

    from mvboost.config import absolute_path, load_config
    from mvboost.eval.config import EvalConfig

    overrides = list(args.set)
    for flag, key in ((args.objects, "job.objects"), (args.split, "job.split"), (args.output, "job.output"),
                      (args.mode, "job.mode")):
        if flag:
            overrides.append(f"{key}={flag}")
    if args.model:
        overrides.append(f"job.models={json.dumps(args.model)}")
    cfg = load_config(EvalConfig, args.config, overrides)
    # as the generation and training jobs: absolute for the workers, and refused when relative inside Ray's copy of
    # a submitted working directory (what the job writes there is deleted with Ray's session cache)
    cfg.job.output = absolute_path(cfg.job.output, "job.output")
    return cfg


def run_on_ray(cfg):
    import ray
    from ray.data import ActorPoolStrategy, DataContext
    from tqdm.auto import tqdm

    from mvboost.eval.job import finish, select_objects
    from mvboost.eval.predict import EvalWorker
    from ray_jobs.local_ray import connect
    from ray_jobs.operators import map_batches_args

    p = select_objects(cfg)  # validates models, objects and split before Ray starts
    if p.pending:
        connect(cfg.ray.address, num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)
        DataContext.get_current().enable_progress_bars = bool(cfg.job.progress)
        res = cfg.worker
        ds = ray.data.from_items([{"object": n} for n in p.pending], override_num_blocks=len(p.pending))

        class EvaluateObjects:  # the operator's name in progress bars and the dashboard
            def __init__(self):
                self.worker = EvalWorker(cfg, p.root)

            def __call__(self, batch):
                rows = self.worker(list(batch["object"]))
                return {k: [r[k] for r in rows] for k in ("object", "status", "reason", "seconds")}

        ds = ds.map_batches(EvaluateObjects, batch_format="numpy",
                            compute=ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors or None),
                            **{**map_batches_args(res), "batch_size": max(1, res.batch_size)})
        with tqdm(total=len(p.names), initial=len(p.names) - len(p.pending), desc="objects",
                  disable=not cfg.job.progress) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(len(batch["object"]))
    return finish(cfg, p)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mvboost.config import ConfigError
    from mvboost.models.hub import ModelNotFound

    args = parse_args(argv)
    try:
        cfg = load(args)
        print(f"output: {cfg.job.output}", flush=True)
        if args.in_process:
            from mvboost.eval.job import run_in_process

            summary = run_in_process(cfg)
        else:
            summary = run_on_ray(cfg)
    except (ConfigError, ModelNotFound, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mvboost.eval.summary import markdown

    print(markdown(summary))
    print(f"per-object JSON, summary.md/.csv/.json and report.html in {cfg.job.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
