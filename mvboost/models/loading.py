"""Checkpoint loading shared by the models: safetensors only, strict with readable errors,
local paths or Hugging Face ids resolved offline by default."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

LGM_REPO_ID = "ashawkey/LGM"
LGM_FILENAME = "model_fp16_fixrot.safetensors"
LGM_LEGACY_FILENAME = "model_fp16.safetensors"
LGM_CONFIG_FILENAME = "lgm_config.json"  # optional, written by us for non-preset models


class CheckpointError(ValueError):
    """A checkpoint does not fit the model (lists missing, unexpected and mis-shaped keys)."""


def resolve_file(source: str | os.PathLike, filename: str, allow_download: bool = False,
                 revision: str | None = None) -> Path:
    """Resolve ``source`` (a file, a folder holding ``filename``, a Hugging Face id at ``revision``, or a
    ``tiny:``/``random:`` model) to a local file, through :func:`mvboost.models.hub.resolve`."""
    from .hub import download_hint, looks_like_hub_id, resolve

    path = resolve(str(source), revision, what="checkpoint", allow_download=allow_download)
    if path.is_file():
        return path
    cand = path / filename
    if not cand.is_file():
        found = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f"; get it with `{download_hint(str(source), revision)} {filename}`" if looks_like_hub_id(str(source)) else ""
        raise FileNotFoundError(f"{path} has no {filename} (safetensors files there: {found or 'none'}){hint}")
    return cand


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


def load_lgm(source, preset: str | None = None, *, dtype: torch.dtype = torch.float32, device="cpu",
             strict: bool = True, allow_legacy_rotation: bool = False, allow_download: bool = False,
             filename: str | None = None, revision: str | None = None, **config_overrides):
    """Load an LGM from a safetensors file, a folder, a Hugging Face id (``ashawkey/LGM`` at ``revision``)
    or a built model (``tiny:lgm``, ``random:lgm``).

    ``preset`` is inferred from the tensor shapes when not given (or read from ``lgm_config.json``
    beside the weights). fp16/bf16/fp32 weights are cast to ``dtype``. The old
    ``model_fp16.safetensors`` (rotation-normalisation bug) is refused unless
    ``allow_legacy_rotation=True``, which also switches the model to the legacy normalisation.
    """
    from .lgm import LGM, LGMConfig

    path = resolve_file(source, filename or LGM_FILENAME, allow_download, revision)
    legacy = path.name == LGM_LEGACY_FILENAME
    if legacy and not allow_legacy_rotation:
        raise CheckpointError(
            f"{path.name} is the pre-2024-04-03 LGM checkpoint trained with the rotation-normalisation bug "
            f"(quaternions normalised across Gaussians). Use {LGM_FILENAME}, or pass "
            "allow_legacy_rotation=True to reproduce the old behaviour."
        )
    state = read_safetensors(path)
    cfg_file = path.parent / LGM_CONFIG_FILENAME
    if preset is None and cfg_file.is_file():
        cfg = LGMConfig.from_dict(json.loads(cfg_file.read_text()))
        cfg = LGMConfig(**{**cfg.to_dict(), **config_overrides})
    elif preset is None:
        cfg = None
        for name in LGMConfig.PRESETS:
            cand = LGMConfig.preset(name, **config_overrides)
            with torch.device("meta"):
                shapes = {k: tuple(v.shape) for k, v in LGM(cand).state_dict().items()}
            if all(k in state and tuple(state[k].shape) == s for k, s in shapes.items()) and len(shapes) == len(state):
                cfg = cand
                break
        if cfg is None:
            raise CheckpointError(f"{path}: tensor shapes match none of the LGM presets {LGMConfig.PRESETS}; "
                                  f"pass preset= or put {LGM_CONFIG_FILENAME} beside the weights")
    else:
        cfg = LGMConfig.preset(preset, **config_overrides)
    if legacy:
        cfg = LGMConfig(**{**cfg.to_dict(), "legacy_rotation_norm": True})
    if strict:  # every tensor comes from the file: skip the random init
        with torch.device("meta"):
            model = LGM(cfg)
        check_state_dict(model, state, path.name)
        model = model.to_empty(device=device)
    else:  # tolerant (the official training code's behaviour): copy only the tensors whose shapes match
        model = LGM(cfg).to(device)
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(state, strict=strict)
    return model.to(dtype=dtype).eval()


def save_lgm(model, folder, filename: str = LGM_FILENAME, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``model`` in the official layout (one safetensors file with ``unet.…``/``conv.…`` keys)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    out = folder / filename
    save_file(state, str(out), metadata={"format": "pt"})
    return out
