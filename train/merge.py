"""Merge a LoRA adapter into LGM and write a plain checkpoint that ``load_lgm`` reads.

    python -m train.merge --base ashawkey/LGM --adapter <run>/checkpoint_…/adapter --out merged/ [--dtype fp16]
"""
from __future__ import annotations

import argparse
import sys


def merge(base: str, adapter: str, preset: str | None = None, revision: str | None = None):
    from mvboost.models.loading import load_lgm
    from mvboost.train.lora import merge_adapter

    return merge_adapter(load_lgm(base, preset=preset, revision=revision), adapter)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the base LGM: a path, a Hugging Face id, tiny:lgm or random:lgm")
    p.add_argument("--revision", default=None, help="branch, tag or commit of a Hugging Face --base (default main)")
    p.add_argument("--adapter", required=True, help="a peft adapter folder (checkpoint_*/adapter)")
    p.add_argument("--out", required=True)
    p.add_argument("--preset")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    a = p.parse_args(argv)
    import torch

    from mvboost.models.checkpoint import save_lgm

    merged = merge(a.base, a.adapter, a.preset, a.revision)
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    path = save_lgm(merged, a.out, dtype=dt)
    print(f"merged LGM written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
