"""The checkpoint format shared by the model builders and the loaders: safetensors only, strict key
and shape checks with readable errors, the official LGM file names, and LGM written in the official
layout. Nothing here resolves a model reference (that is :mod:`mvboost.models.hub`), so builders and
loaders can both import it without a circle."""
from __future__ import annotations

from pathlib import Path

import torch

LGM_FILENAME = "model_fp16_fixrot.safetensors"
LGM_LEGACY_FILENAME = "model_fp16.safetensors"
LGM_CONFIG_FILENAME = "lgm_config.json"  # optional, written by us for non-preset models


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


def save_lgm(model, folder, filename: str = LGM_FILENAME, dtype: torch.dtype = torch.float16,
             with_config: bool = False) -> Path:
    """Write ``model`` in the official layout (one safetensors file with ``unet.…``/``conv.…`` keys);
    ``with_config`` also writes its :class:`LGMConfig` as ``lgm_config.json`` (needed to load a model whose
    shapes match no preset)."""
    import json

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    out = folder / filename
    save_file(state, str(out), metadata={"format": "pt"})
    if with_config:
        (folder / LGM_CONFIG_FILENAME).write_text(json.dumps(model.config.to_dict(), indent=1))
    return out
