"""Loading and saving reconstruction models by reference: the one owner for training, merge, evaluation and
inference. A reference (``[lgm:|openlrm:]<path | Hugging Face id | tiny:… | random:…>``, parsed by
:func:`mvboost.models.hub.model_ref`) is resolved through :mod:`mvboost.models.hub`, read and checked in its
backend's checkpoint format (beside its model: :mod:`.lgm`, :mod:`.openlrm`; strict checks:
:mod:`.checkpoint`), and a LoRA adapter, if given, is merged here (:func:`load_model`); :func:`save_model` writes
either backend in its official layout."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .checkpoint import CheckpointError, check_state_dict, read_safetensors
from .lgm import LGM_CONFIG_FILENAME, LGM_FILENAME, LGM_LEGACY_FILENAME


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
        hint = (f"; get it with `{download_hint(str(source), revision)} {filename}`"
                if looks_like_hub_id(str(source)) else "")
        raise FileNotFoundError(f"{path} has no {filename} (safetensors files there: {found or 'none'}){hint}")
    return cand


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


def load_openlrm(source, *, revision: str | None = None, device="cpu", dtype: torch.dtype = torch.float32,
                 allow_download: bool = False):
    """An OpenLRM from a folder (``config.json`` + ``model.safetensors``) or a Hub id, strictly: every key and
    shape of the checkpoint must be the model's."""
    from .openlrm import CONFIG_FILENAME, WEIGHTS_FILENAME, OpenLRM, OpenLRMConfig

    weights = resolve_file(source, WEIGHTS_FILENAME, allow_download, revision)
    cfg_file = weights.parent / CONFIG_FILENAME
    if not cfg_file.is_file():
        raise CheckpointError(f"{weights.parent}: no {CONFIG_FILENAME} beside {WEIGHTS_FILENAME}")
    try:
        cfg = OpenLRMConfig.from_dict(json.loads(cfg_file.read_text()))
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    with torch.device("meta"):
        model = OpenLRM(cfg)
    state = read_safetensors(weights)
    check_state_dict(model, state, str(weights))
    model = model.to_empty(device=device)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return model.to(dtype).eval()


def merge_adapter(model: torch.nn.Module, adapter: str):
    """``model`` with a saved peft adapter folder (a training checkpoint's ``adapter/``) merged into its
    weights: a plain model again."""
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ImportError("LoRA adapters need peft: pip install 'mvboost[train]'") from e

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"not a LoRA adapter folder (no adapter_config.json): {adapter}")
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def load_model(ref: str, *, revision: str | None = None, adapter: str = "", preset: str | None = None,
               device="cpu", dtype: torch.dtype = torch.float32):
    """The reconstruction model a reference names (LGM or OpenLRM), with ``adapter`` merged in when given, in
    eval mode on ``device`` / ``dtype``. ``preset`` is for LGM only (an OpenLRM checkpoint carries its config)."""
    from .hub import model_ref

    backend, source = model_ref(ref)
    if backend == "openlrm":
        if preset:
            raise ValueError("a preset is for LGM; an OpenLRM checkpoint carries its config.json")
        model = load_openlrm(source, revision=revision)
    else:
        model = load_lgm(source, preset=preset or None, revision=revision)
    if adapter:
        model = merge_adapter(model, adapter)
    return model.to(device=device, dtype=dtype).eval()


def save_model(model: torch.nn.Module, folder, dtype: torch.dtype = torch.float32) -> Path:
    """Write an LGM or an OpenLRM in its official layout (with its config), which :func:`load_model` reads;
    returns the weights file."""
    from .lgm import LGM, save_lgm
    from .openlrm import OpenLRM, save_openlrm

    if isinstance(model, OpenLRM):
        return save_openlrm(model, folder, dtype=dtype)
    if isinstance(model, LGM):
        return save_lgm(model, folder, dtype=dtype, with_config=True)
    raise TypeError(f"save_model writes LGM or OpenLRM, got {type(model).__name__}")
