"""Helpers shared by the stages: devices, dtypes, compile switches, model loading, lazy imports."""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field

import torch

from .base import Resources

EXTRAS = {"diffusers": "diffusion", "transformers": "diffusion", "skimage": "diffusion", "scipy": "eval",
          "gsplat": "gpu", "webdataset": "ray", "fsspec": "ray", "lpips": "train", "peft": "train",
          "deepspeed": "train", "trimesh": "eval", "pybullet": "eval"}  # rembg (optional matting): pip install rembg


def require(module: str):
    """Import ``module`` or fail with the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = EXTRAS.get(module.split(".")[0])
        hint = f"pip install 'mvboost[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise ImportError(f"{module} is needed here: {hint}") from e


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if torch sees a GPU (never decided from Ray's resources), else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def check_dtype(dtype: str, where: str) -> None:
    if dtype != "auto" and dtype not in DTYPES:
        from ..config import ConfigError

        raise ConfigError(f"{where}: unknown dtype {dtype!r}; choose auto, {', '.join(sorted(DTYPES))}")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 on a GPU that supports it (fp16 otherwise), fp32 on the CPU."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    check_dtype(dtype, "dtype")  # a ConfigError, which is a ValueError
    return DTYPES[dtype]


def pick_compile(setting: str | bool, device: torch.device) -> bool:
    """'auto' compiles on CUDA only (compilation pays off over thousands of calls; on CPU it does not)."""
    s = str(setting).strip().lower()
    if s == "auto":
        return device.type == "cuda"
    if s in ("true", "on", "yes", "1"):
        return True
    if s in ("false", "off", "no", "0"):
        return False
    raise ValueError(f"compile must be auto, true or false, got {setting!r}")


@dataclass
class ModelStageConfig:
    """What every weight-loading stage has: a model reference, where and how to run it."""

    model: str = ""
    revision: str = "main"  # branch, tag or commit of a Hugging Face id (ignored for paths and built models)
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 on GPUs that support it, else fp16; fp32 on CPU
    resources: Resources = field(default_factory=Resources)


def pad_rows(rows: list, batch_size: int, compiled: bool) -> list:
    """With a compiled denoiser, pad a short batch to ``batch_size`` with copies of its last row (callers
    drop the extra outputs): the compiled graph then sees one shape and never recompiles on the last,
    partial batch. Items are independent of the batch composition, so padding changes no output."""
    if not compiled or len(rows) >= batch_size:
        return rows
    return rows + [rows[-1]] * (batch_size - len(rows))


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def shared_model(key: tuple, factory):
    """One loaded model per process and key (stages fused into one worker share weights: e.g. the
    ``era3d`` and ``refine`` stages load one Era3D pipeline)."""
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = factory()
        return _SHARED[key]


class ModelStage:
    """Mixin for stages whose config is a :class:`ModelStageConfig`: the model is checked on the driver
    (``preflight``, builds nothing) and resolved on the worker, both through :mod:`mvboost.models.hub`."""

    name: str
    config: ModelStageConfig

    def preflight(self) -> None:
        from ..models.hub import check

        check_dtype(self.config.dtype, f"{self.name}.dtype")
        if hasattr(self.config, "compile"):
            pick_compile(self.config.compile, torch.device("cpu"))  # raises on a bad value
        ref, = self.model_refs
        check(ref.id, ref.revision, what=ref.stage)

    def model_path(self):
        from ..models.hub import resolve

        ref, = self.model_refs
        return resolve(ref.id, ref.revision, what=ref.stage)


def era3d_camera_json(size: int, world_width: float) -> str:
    """``cameras.json`` of a sample: Era3D's six orthographic cameras at ``size`` px spanning ``world_width``."""
    import json

    from ..geometry.cameras import ERA3D_VIEW_NAMES, era3d_cameras

    cam = era3d_cameras(size, world_width).to_json()
    cam.update(views=list(ERA3D_VIEW_NAMES), world_width=world_width,
               note="orthographic; fx = pixels per world unit; OpenGL c2w; background white")
    return json.dumps(cam)
