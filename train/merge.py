"""Merge a LoRA adapter into its base model and write a plain checkpoint in the base's official layout.

    python -m train.merge --base ashawkey/LGM --adapter <run>/checkpoint_…/adapter --out merged/ [--dtype fp16]
    python -m train.merge --base openlrm:zxhezexin/openlrm-mix-base-1.1 --adapter … --out merged/

LGM: ``model.safetensors`` that ``load_lgm`` reads; OpenLRM (``--base openlrm:<source>``): ``config.json`` +
``model.safetensors``, as the official checkpoints, that ``--model openlrm:merged/`` reads everywhere.
"""
from __future__ import annotations

import argparse
import sys


def merge(base: str, adapter: str, preset: str | None = None, revision: str | None = None):
    """The base model (``lgm`` or ``openlrm:<source>``) with ``adapter`` merged into its weights."""
    from mvboost.models.loading import load_model

    return load_model(base, revision=revision, adapter=adapter, preset=preset)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the base model: an LGM path or Hugging Face id, tiny:lgm, "
                                                 "random:lgm, or openlrm:<folder | Hub id | tiny | random>")
    p.add_argument("--revision", default=None, help="branch, tag or commit of a Hugging Face --base (default main)")
    p.add_argument("--adapter", required=True, help="a peft adapter folder (checkpoint_*/adapter)")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", help="LGM's preset (default: inferred from the checkpoint)")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    a = p.parse_args(argv)
    import torch

    from mvboost.models.hub import ModelNotFound
    from mvboost.models.loading import save_model
    from mvboost.models.openlrm import OpenLRM

    try:
        merged = merge(a.base, a.adapter, a.preset, a.revision)
    except (ModelNotFound, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    path = save_model(merged, a.out, dtype=dt)
    print(f"merged {'OpenLRM' if isinstance(merged, OpenLRM) else 'LGM'} written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
