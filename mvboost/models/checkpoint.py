"""What every checkpoint format shares: safetensors only, strict key and shape checks with readable errors.
Each backend's own format sits beside its model (LGM: :mod:`.lgm`; OpenLRM: :mod:`.openlrm`; Era3D:
:mod:`.era3d_pipeline`). Nothing here resolves a model reference (that is :mod:`mvboost.models.hub`)."""
from __future__ import annotations

from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint does not fit the model (lists missing, unexpected and mis-shaped keys)."""


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: only .safetensors checkpoints are read (pickle files can execute code)")
    from safetensors.torch import load_file

    return load_file(str(path))


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        def block(title, items):
            if not items:
                return ""
            shown = "\n    ".join(items[:20]) + (f"\n    … and {len(items) - 20} more" if len(items) > 20 else "")
            return f"\n  {title} ({len(items)}):\n    {shown}"
        raise CheckpointError(f"{what} does not match the model:" + block("missing keys", missing)
                              + block("unexpected keys", unexpected) + block("mis-shaped keys", misshaped))
