"""What the boosting loop needs of a reconstruction model, one class per backend.

The loop (:mod:`mvboost.train.loop`) is the same for every model: a batch of shard samples in, views at the
sample's cameras out, the same loss against the refined views. A backend says how its model is loaded, where
LoRA goes by default, how a batch becomes its output (``forward``), how that output is rendered at the shard's
cameras (``render``) and how a full-parameter checkpoint is written. ``model.checkpoint`` names the backend
(``openlrm:<source>``; no prefix: LGM), as inference, the evaluation and ``train.merge`` do.

- :class:`LGMBackend`: Era3D's colour views 0, 2, 3, 4 of the sample (C^pi) + LGM's default rays -> Gaussians,
  rasterised at the sample's six orthographic cameras.
- :class:`OpenLRMBackend`: the sample's input view (``input.png``, composited on white, resized to
  ``openlrm.source_size``) from OpenLRM's canonical source camera -> triplanes, ray-marched (stratified samples,
  ``openlrm.samples_per_ray``) at the same six cameras, at ``openlrm.render_size`` (the targets are resized to
  it), ``openlrm.chunk`` rays per pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .lora import DEFAULT_TARGET


@dataclass
class OpenLRMSection:
    source_size: int = 0  # input resolution, a multiple of 14; 0: the checkpoint's (small 224, base 336, large 448)
    source_distance: float = 2.0  # the canonical source camera's distance (official inference)
    render_size: int = 0  # views rendered for the loss, targets resized to it; 0: the shard's view size
    samples_per_ray: int = 0  # 0: the model's rendering_samples_per_ray
    chunk: int = 16384  # rays per rendering pass


class LGMBackend:
    name = "lgm"

    def __init__(self, cfg):
        self.cfg = cfg

    def load(self, source: str, device):
        from ..models.loading import load_model

        m = self.cfg.model
        return load_model(f"lgm:{source}", revision=m.revision, preset=m.preset or None, device=device)

    def lora_target(self, model) -> str:
        return DEFAULT_TARGET

    def forward(self, model, engine, batch, device, dtype):
        return engine(model.prepare_inputs(batch["inputs"].to(device)).to(dtype)).float()

    def render(self, model, output, batch, device):
        from .loss import render_prediction

        rgb, alpha = render_prediction(output, [c.to(device) for c in batch["cameras"]])
        return rgb, alpha, batch["target"].to(device), batch["mask"].to(device)

    def save(self, model, folder: Path) -> None:
        from ..models.loading import save_model

        save_model(model, folder)


class OpenLRMBackend:
    name = "openlrm"
    #: LoRA on the transformer's attention: the q, k, v and output projections of self- and cross-attention
    TARGET = r".*transformer\.layers\.\d+\.(self_attn|cross_attn)\.(q_proj|k_proj|v_proj|out_proj)"

    def __init__(self, cfg):
        self.cfg = cfg

    def load(self, source: str, device):
        from ..models.loading import load_model

        cfg = self.cfg
        if cfg.model.preset:
            raise ValueError("model.preset is for LGM; an OpenLRM checkpoint carries its config.json")
        if cfg.openlrm.source_size % 14:
            raise ValueError(f"openlrm.source_size must be a multiple of 14, got {cfg.openlrm.source_size}")
        return load_model(f"openlrm:{source}", revision=cfg.model.revision, device=device)

    def lora_target(self, model) -> str:
        return self.TARGET

    def forward(self, model, engine, batch, device, dtype):
        from ..models.openlrm import openlrm_input, source_camera, source_size_for

        c = self.cfg.openlrm
        size = c.source_size or source_size_for(model.config)
        x = torch.cat([openlrm_input(rgba, size) for rgba in batch["input_rgba"]]).to(device, dtype)
        return engine(x, source_camera(c.source_distance, batch=len(x)).to(device, dtype)).float()

    def render(self, model, planes, batch, device):
        from ..models.openlrm import OPENLRM_SCALE, SAME_FRAMING_SCALE, world_cameras

        c = self.cfg.openlrm
        target, mask = batch["target"].to(device), batch["mask"].to(device)
        size = c.render_size or target.shape[-1]
        # the scale follows the sample's framing: an asset sample's input is its front target view (same framing),
        # the chain's input is the matted image at 80 % (its targets at Era3D's 82 %)
        cams = torch.stack([world_cameras(cam, SAME_FRAMING_SCALE if same else OPENLRM_SCALE)
                            for cam, same in zip(batch["cameras"], batch["input_is_front_view"])])
        cams = cams.to(device, planes.dtype)
        out = model.render(planes, cams, size, 1.0, samples_per_ray=c.samples_per_ray or None, chunk=c.chunk,
                           stochastic=model.training)
        if size != target.shape[-1]:
            def resize(x):
                return F.interpolate(x.flatten(0, 1), size=(size, size), mode="area").unflatten(0, x.shape[:2])

            target, mask = resize(target), resize(mask)
        return out["rgb"], out["alpha"], target, mask

    def save(self, model, folder: Path) -> None:
        from ..models.loading import save_model

        save_model(model, folder)


def backend_for(cfg):
    """(backend, source) of ``cfg.model.checkpoint``."""
    from ..models.hub import model_ref

    name, source = model_ref(cfg.model.checkpoint)
    return (OpenLRMBackend if name == "openlrm" else LGMBackend)(cfg), source
