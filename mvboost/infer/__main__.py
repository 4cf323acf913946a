"""Image -> 3D with LGM (optionally boosted) and Era3D, or with OpenLRM.

    python -m mvboost.infer <image | folder | URL> [...] --output <dir> [--lgm <id|path>] [--lora <adapter>]
        [--optimize-input-view] [--config infer.yaml] [--set a.b=c ...]
    python -m mvboost.infer <images> --output <dir> --model openlrm:<folder | id | tiny | random>
    python -m mvboost.infer <images> --output <dir> --model tiny          # tiny random models: plumbing only

Writes one folder per image: gaussians.ply (3DGS layout), mesh.glb (vertex colours), turntable.gif,
the 6 Era3D views and meta.json; plus summary.json. The official checkpoints by default (Era3D
pengHTYX/MacLab-Era3D-512-6view and LGM ashawkey/LGM; OpenLRM zxhezexin/openlrm-mix-base-1.1) from the
local Hugging Face cache: a missing one stops the run at start with the `hf download` line.
Exit codes: 0 all written, 1 some images rejected (reasons in summary.json), 2 usage/config error.
"""
from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mvboost.infer", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="image files, folders of images or URLs (any fsspec protocol)")
    p.add_argument("--output", required=True, help="output folder (one sub-folder per image)")
    p.add_argument("--config", help="a YAML InferConfig (see mvboost/infer/run.py)")
    p.add_argument("--model", help="the reconstruction model, backend:source: lgm:<LGM id or folder> or "
                                   "openlrm:<folder with config.json + model.safetensors | Hub id | tiny | random>; "
                                   "tiny or random (any backend): random-weight models of every stage, plumbing "
                                   "only (default: the official checkpoints)")
    p.add_argument("--lgm", help="LGM checkpoint: a Hugging Face id, a folder, a merged checkpoint, tiny:lgm")
    p.add_argument("--lgm-revision", help="branch, tag or commit of a Hugging Face --lgm")
    p.add_argument("--lora", help="a LoRA adapter folder from training (checkpoint_*/adapter)")
    p.add_argument("--optimize-input-view", action="store_true",
                   help="fit the pose and a Gaussian residual to the input view (MVBoost §3.4)")
    p.add_argument("--ply-frame", choices=["native", "viewer"],
                   help="gaussians.ply's frame: native (LGM's, +Y up; default) or viewer (-Y up, as SuperSplat and "
                        "COLMAP-trained scenes expect)")
    p.add_argument("--ply-sh-degree", type=int, choices=[0, 3],
                   help="3: add zero f_rest_* fields (viewers that need SH degree 3 fields, e.g. SIBR)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: auto)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config value")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ..config import ConfigError, load_config
    from ..models.hub import ModelNotFound
    from .common import list_inputs
    from .run import InferConfig, check_models, image_to_3d

    overrides = []
    if args.model:
        from ..models.hub import BACKENDS, model_ref
        from .run import BUILT_MODELS

        prefix, _, rest = args.model.partition(":")
        if args.model in ("tiny", "random"):
            prefix, rest = "lgm", args.model
        if prefix not in BACKENDS or not rest:
            print(f"error: --model {args.model!r}: expected tiny, random, lgm:<source> or openlrm:<source>",
                  file=sys.stderr)
            return 2
        if (prefix, rest) in BUILT_MODELS:
            overrides += [f"backend={prefix}", *BUILT_MODELS[prefix, rest]]
        else:
            backend, source = model_ref(args.model)
            overrides += [f"backend={backend}", f"{backend}.model={source}"]
    overrides += args.set  # the user's --set wins over what --model implies
    for flag, key in ((args.lgm, "lgm.model"), (args.lgm_revision, "lgm.revision"), (args.lora, "lora"),
                      (args.device, "device"), (args.seed, "seed"), (args.ply_frame, "output.ply_frame"),
                      (args.ply_sh_degree, "output.ply_sh_degree")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.optimize_input_view:
        overrides.append("optimize_input_view=true")
    try:
        cfg = load_config(InferConfig, args.config, overrides)
        sources = [s for src in args.inputs for s in list_inputs(src)]
        warning = check_models(cfg)
        if warning:
            print(warning, file=sys.stderr)
        runner = image_to_3d(cfg)
    except (ConfigError, ModelNotFound, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    with tqdm(total=len(sources), desc="image -> 3D", unit="image", file=sys.stderr) as bar:
        results = runner(sources, args.output, progress=bar)
    for r in results:
        if r.rejected:
            print(f"rejected {r.source}: {r.rejected}", file=sys.stderr)
        else:
            print(f"{r.source} -> {r.folder}")
    bad = sum(r.rejected is not None for r in results)
    print(f"{len(results) - bad} of {len(results)} written to {args.output} (summary.json)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
