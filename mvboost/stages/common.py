"""Helpers shared by the stages: devices, dtypes, lazy imports with one clear message."""
from __future__ import annotations

import importlib

import torch

EXTRAS = {"diffusers": "diffusion", "transformers": "diffusion", "skimage": "diffusion", "scipy": "diffusion",
          "gsplat": "gpu", "webdataset": "ray", "fsspec": "ray", "rembg": "matting"}


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


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, fp32, fp16 or bf16")
    return table[dtype]
